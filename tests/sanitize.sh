#!/usr/bin/env bash
# Sanitizers over the test suite (issue 6 §6), for CI (.ci/run) and by hand:
#   1. build-asan: everything under ASan+UBSan (LeakSanitizer on); the unit tests and the
#      integration tests (not the broker-restarting faults/chaos files, nor the benchmark) run
#      against those binaries. The harness fails a test when a daemon log holds a sanitizer
#      report; ASAN_OPTIONS=abort_on_error=1 also makes a leak at exit a non-zero exit status.
#   2. Leak check: the ASan daemons deliver LEAK_MESSAGES (10,000) messages, stop on SIGTERM
#      and must exit 0 with nothing from LeakSanitizer (tests/integration/leakcheck.py).
#   3. build-tsan: msg-api under TSan (TSAN_OPTIONS=halt_on_error=1, suppressions for
#      third-party frames only: tests/tsan.supp) runs a subset of the integration tests.
# Needs RabbitMQ on localhost (scripts/rabbitmq.sh) and the packages of scripts/deps.sh.
# SANITIZE_STEPS picks steps (default "asan leak tsan").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ASAN_BUILD=${ASAN_BUILD_DIR:-build-asan}
TSAN_BUILD=${TSAN_BUILD_DIR:-build-tsan}
STEPS=${SANITIZE_STEPS:-asan leak tsan}
JOBS=$(nproc)

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_invalid_pointer_pairs=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp"
export PYTHONDONTWRITEBYTECODE=1

step() { printf '\n== sanitize: %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
start=$SECONDS

if [[ " $STEPS " == *" asan "* || " $STEPS " == *" leak "* ]]; then
  step "build $ASAN_BUILD (address,undefined)"
  cmake -S . -B "$ASAN_BUILD" -DSANITIZE=address,undefined -DWERROR=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$ASAN_BUILD" -j"$JOBS" >/dev/null
fi

if [[ " $STEPS " == *" asan "* ]]; then
  step "unit + integration tests under ASan+UBSan"
  (cd "$ASAN_BUILD" && ctest --output-on-failure -j2 -R '^(unit|integration)\.' -E 'chaos|faults|bench|evolution_outage')
fi

if [[ " $STEPS " == *" leak "* ]]; then
  step "leak check: ${LEAK_MESSAGES:-10000} messages through the ASan daemons"
  MSG_API_BIN="$ROOT/$ASAN_BUILD/api/msg-api" MSG_CONSUMER_BIN="$ROOT/$ASAN_BUILD/consumer/msg-consumer" \
    python3 tests/integration/leakcheck.py
fi

if [[ " $STEPS " == *" tsan "* ]]; then
  step "build $TSAN_BUILD (thread): msg-api"
  cmake -S . -B "$TSAN_BUILD" -DSANITIZE=thread -DWERROR=ON -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$TSAN_BUILD" -j"$JOBS" --target msg-api >/dev/null
  # Only msg-api runs under TSan; the consumer goes along in its ASan build (else the plain one).
  consumer="$ROOT/$ASAN_BUILD/consumer/msg-consumer"
  [ -x "$consumer" ] || consumer="$ROOT/build/consumer/msg-consumer"
  for t in ${TSAN_TESTS:-01_send 24_idempotency 26_metrics 36_receipts_callbacks 54_snapshots}; do
    step "integration.$t with msg-api under TSan"
    MSG_API_BIN="$ROOT/$TSAN_BUILD/api/msg-api" MSG_CONSUMER_BIN="$consumer" \
      timeout 300 python3 "tests/integration/test_$t.py"
  done
fi
echo "sanitize: all clean ($((SECONDS - start))s)"
