#!/usr/bin/env bash
# The monitoring files of deploy/monitoring/, checked with the tools that read them: promtool
# checks the alert rules and runs their unit tests (alerts.test.yaml), checks the Prometheus
# configuration of compose.yaml's monitoring profile, then test_prometheus_roundtrip.py scrapes
# both daemons with a real Prometheus server and compares what it stored with what they exposed
# (it also runs every dashboard query). Needs Debian's prometheus package (promtool and the
# server; .ci/run installs it), the local RabbitMQ and a build (MSG_BIN_DIR, default build/, or
# MSG_API_BIN and MSG_CONSUMER_BIN as ctest passes them).
#
#   tests/monitoring/run.sh                   (ctest -L monitoring runs it too)
#
# Without promtool or prometheus it skips (exit 77), except in CI (CI set), where it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in promtool prometheus; do
  if ! command -v "$tool" >/dev/null; then
    if [ -n "${CI:-}" ]; then
      echo "monitoring: $tool is missing (apt-get install prometheus)" >&2
      exit 1
    fi
    echo "monitoring: $tool is missing (apt-get install prometheus): skipped"
    exit 77
  fi
done

echo "== promtool check rules"
promtool check rules deploy/monitoring/alerts.yaml
echo "== promtool test rules"
promtool test rules tests/monitoring/alerts.test.yaml

# prometheus.yml names the rules where the compose container mounts them; check it with the
# path pointing at this tree's copy.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/prometheus/msg/alerts.yaml#$PWD/deploy/monitoring/alerts.yaml#" \
  deploy/monitoring/prometheus.yml >"$tmp/prometheus.yml"
echo "== promtool check config"
promtool check config "$tmp/prometheus.yml"

echo "== Prometheus round trip"
PYTHONDONTWRITEBYTECODE=1 python3 tests/monitoring/test_prometheus_roundtrip.py
