#!/usr/bin/env bash
# The leak check alone: builds build-asan if needed and runs tests/integration/leakcheck.py
# (LEAK_MESSAGES, default 10000) against it. Same as `SANITIZE_STEPS=leak tests/sanitize.sh`.
exec env SANITIZE_STEPS=leak "$(dirname "$0")/sanitize.sh"
