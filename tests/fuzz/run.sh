#!/usr/bin/env bash
# Builds the libFuzzer targets with clang under ASan+UBSan and runs each for FUZZ_SECONDS
# (default 30) from its seed corpus. Exits non-zero on the first crash, leak or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
CC=clang cmake -S . -B "$BUILD" -DFUZZ=ON -DSANITIZE=address,undefined -DWERROR=ON \
  -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target fuzz_request fuzz_batch fuzz_redrive fuzz_status fuzz_job fuzz_webhook \
  fuzz_config >/dev/null
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for target in request batch redrive status job webhook config; do
  work=$(mktemp -d)
  log=$(mktemp)
  cp tests/fuzz/corpus/"$target"/* "$work"/
  echo "fuzz_$target: ${SECONDS_EACH}s"
  if ! "$BUILD"/tests/fuzz/fuzz_"$target" -max_total_time="$SECONDS_EACH" -max_len=8192 \
      -print_final_stats=1 "$work" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz_$target FAILED (crash input saved in the current directory)"
    exit 1
  fi
  grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "$log" || true
  rm -rf "$work" "$log"
done
echo "fuzzers: all clean"
