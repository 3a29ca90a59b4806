#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages needed to build, run and test the service (root or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  librabbitmq-dev libcurl4-openssl-dev libcivetweb-dev libjansson-dev libyaml-dev libssl-dev
  rabbitmq-server python3 curl ca-certificates wrk
)

# Test tools only (tests/deploy): docker-compose validates compose.yaml (`config -q`
# needs no Docker engine). kubectl, for `kubectl kustomize`, is not here: Debian bookworm
# packages neither kubectl nor kustomize; the machine image ships google-cloud-cli's kubectl.
# chromium is the browser tests/browser drives (/usr/bin/chromium).
TEST_TOOL_PACKAGES=(docker-compose chromium)
PACKAGES+=("${TEST_TOOL_PACKAGES[@]}")

# Node.js only runs the npm test tools below; a machine that already has node and npm
# (another packaging) keeps them.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The npm test tools, kept inside the checkout (.tools/, git-ignored): the OpenAPI linter;
# tests/deploy's schema check of the rendered Kubernetes objects (kubernetes-models 4 and
# @kubernetes-models/keda 0.4, @kubernetes-models/prometheus-operator 4 for the ServiceMonitor,
# on the same model base: their next majors need Node.js 22, the machine has 20; yaml
# parses the manifests) and its two Dockerfile linters; puppeteer-core 24 drives Debian's
# chromium in tests/browser (it downloads no browser of its own; 25 needs Node.js 22).
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/.tools"
NPM_TOOLS=(@redocly/cli@2 kubernetes-models@4 @kubernetes-models/keda@0.4
           @kubernetes-models/prometheus-operator@4 yaml@2 dockerfilelint@1 dockerfile-utils@0.16
           puppeteer-core@24)
for marker in .bin/redocly .bin/dockerfilelint .bin/dockerfile-utils yaml/package.json \
              kubernetes-models/package.json @kubernetes-models/keda/package.json \
              @kubernetes-models/prometheus-operator/package.json puppeteer-core/package.json; do
  if [ ! -e "$TOOLS/node_modules/$marker" ]; then
    echo "Installing the npm test tools into $TOOLS: ${NPM_TOOLS[*]}"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --silent "${NPM_TOOLS[@]}" >/dev/null
    break
  fi
done
if ! command -v kubectl >/dev/null 2>&1; then
  echo "Note: no kubectl, so tests/deploy cannot render the kustomizations (skipped here," \
       "a failure in CI)." >&2
fi
