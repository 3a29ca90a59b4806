#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages needed to build, run and test the service (root or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  librabbitmq-dev libcurl4-openssl-dev libcivetweb-dev libjansson-dev libyaml-dev
  rabbitmq-server python3 curl ca-certificates wrk
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "Installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
