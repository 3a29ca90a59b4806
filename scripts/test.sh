#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, starts RabbitMQ, builds with warnings as
# errors, and runs ctest (unit tests, the fake Evolution API's self-test, integration tests
# against the real broker). The exit status is ctest's.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/rabbitmq.sh

BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DWERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
cd "$BUILD_DIR"
ctest --output-on-failure -j2 "$@"
