#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages needed to build, run and test the service (root or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  librabbitmq-dev libcurl4-openssl-dev libcivetweb-dev libjansson-dev libyaml-dev
  rabbitmq-server python3 curl ca-certificates wrk
)

# Node.js only runs the OpenAPI linter in the tests; a machine that already has node and npm
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

# The OpenAPI linter, kept inside the checkout (.tools/, git-ignored).
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/.tools"
if [ ! -x "$TOOLS/node_modules/.bin/redocly" ]; then
  echo "Installing the OpenAPI linter (@redocly/cli) into $TOOLS"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent @redocly/cli@2 >/dev/null
fi
