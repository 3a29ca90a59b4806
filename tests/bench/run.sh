#!/usr/bin/env bash
# Benchmark of the whole service on this machine: broker ceiling, accept throughput (wrk), end to
# end through the fake Evolution API, memory. Prints each figure as it goes and, last, one line
# "BENCH_SUMMARY {json}". Uses its own topology names (bench-<random>*) and free ports, so it
# never touches a running service; stops what it started and deletes its topology on exit.
#
# Knobs (environment; defaults in brackets, BENCH_SMOKE=1 switches to tiny ones for the tests):
#   BENCH_DURATION [10s]          each wrk run (accept at 16 and 64 connections)
#   BENCH_FAKE_DURATION [5s]      wrk against the fake Evolution API alone
#   BENCH_CEILING_COUNT [200000]  messages of the pipelined broker-ceiling run
#   BENCH_CEILING_WINDOW [1000]   confirms in flight in that run
#   BENCH_CEILING1_COUNT [3000]   messages of the one-confirm-at-a-time run
#   BENCH_E2E_COUNT [20000]       messages of the end-to-end run at 0 ms Evolution latency
#   BENCH_E2E_SLOW_COUNT [= BENCH_E2E_COUNT]  same at BENCH_SLOW_LATENCY_MS [100] ms
#   BENCH_E2E_CONNS [64]          concurrent connections of the end-to-end poster
#   BENCH_E2E_TIMEOUT [300]       seconds to wait for the fake to have sent everything
#   BENCH_CACHE_TASKS [1000000]   status events fed to a fresh msg-api for the cache RSS figure
#   BENCH_BOOT_EVENTS [5000000]   status events already on the stream when a new msg-api replica
#                                 and a new msg-consumer start (the boot figures)
#   BENCH_BOOT_SNAPSHOT_INTERVAL [10s]  api.snapshot_interval of the replica that lives through
#                                 that stream and writes the snapshot the new replica loads
#   BENCH_BOOT_BATCH [1]          status events per stream message in that stream (the daemons
#                                 batch theirs under load; 1 is the worst case)
#   BENCH_PREFETCH [64]           consumer.prefetch
#   BENCH_API_THREADS [unset]     api.threads (unset: the daemon's default)
#   BENCH_LOG_LEVEL [info]        log.level of both daemons
#   BENCH_BUILD_DIR [build]       CMake build tree; BENCH_NO_BUILD=1 skips building
#   BENCH_FAKE [c]                fake Evolution API: c (tests/bench/fake_evolution_fast.c, the
#                                 bench_fake_evolution target) or python (tests/fake/, ~10x slower)
#   BENCH_FAKE_THREADS [256]      C fake: worker threads = connections whose latency can overlap
#   BENCH_KEEP=1                  keep the run directory (configs, logs, wrk reports)
#   BENCH_STRICT=1                exit 3 when the end-to-end check finds a lost, duplicated or
#                                 unfinished message (the summary line is printed either way)
#   AMQP_URL, RABBITMQ_MGMT_URL   broker and management API (defaults: guest on localhost)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR="$ROOT/tests/bench"
CLIENT="$BENCH_DIR/bench_client.py"
FAKE_SCRIPT="$ROOT/tests/fake/fake_evolution.py"
PY=${PYTHON:-python3}

if [ "${BENCH_SMOKE:-0}" = 1 ]; then
  : "${BENCH_DURATION:=2s}" "${BENCH_FAKE_DURATION:=2s}" "${BENCH_CEILING_COUNT:=5000}"
  : "${BENCH_CEILING1_COUNT:=200}" "${BENCH_E2E_COUNT:=200}" "${BENCH_E2E_SLOW_COUNT:=100}"
  : "${BENCH_E2E_TIMEOUT:=60}" "${BENCH_CACHE_TASKS:=10000}" "${BENCH_BOOT_EVENTS:=20000}"
fi
DURATION=${BENCH_DURATION:-10s}
FAKE_DURATION=${BENCH_FAKE_DURATION:-5s}
CEILING_COUNT=${BENCH_CEILING_COUNT:-200000}
CEILING_WINDOW=${BENCH_CEILING_WINDOW:-1000}
CEILING1_COUNT=${BENCH_CEILING1_COUNT:-3000}
E2E_COUNT=${BENCH_E2E_COUNT:-20000}
E2E_SLOW_COUNT=${BENCH_E2E_SLOW_COUNT:-$E2E_COUNT}
SLOW_LATENCY_MS=${BENCH_SLOW_LATENCY_MS:-100}
E2E_CONNS=${BENCH_E2E_CONNS:-64}
E2E_TIMEOUT=${BENCH_E2E_TIMEOUT:-300}
CACHE_TASKS=${BENCH_CACHE_TASKS:-1000000}
BOOT_EVENTS=${BENCH_BOOT_EVENTS:-5000000}
BOOT_BATCH=${BENCH_BOOT_BATCH:-1}
BOOT_SNAPSHOT_INTERVAL=${BENCH_BOOT_SNAPSHOT_INTERVAL:-10s}
PREFETCH=${BENCH_PREFETCH:-64}
LOG_LEVEL=${BENCH_LOG_LEVEL:-info}
FAKE_KIND=${BENCH_FAKE:-c}
FAKE_THREADS=${BENCH_FAKE_THREADS:-256}
case "$FAKE_KIND" in
  c) FAKE_LABEL="C, CivetWeb" ;;
  python) FAKE_LABEL="Python" ;;
  *) printf 'bench: BENCH_FAKE must be c or python, not %s\n' "$FAKE_KIND" >&2; exit 1 ;;
esac
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export RABBITMQ_MGMT_URL=${RABBITMQ_MGMT_URL:-http://127.0.0.1:15672}

API_BIN="$BUILD_DIR/api/msg-api"
CONSUMER_BIN="$BUILD_DIR/consumer/msg-consumer"
CEILING_BIN="$BUILD_DIR/tests/bench/bench_broker_ceiling"
FAKE_BIN="$BUILD_DIR/tests/bench/bench_fake_evolution"

say() { printf '%s\n' "$*"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ---------------------------------------------------------------------------------

command -v wrk >/dev/null 2>&1 || "$ROOT/scripts/deps.sh"
command -v wrk >/dev/null 2>&1 || die "wrk is not installed (apt-get install wrk)"
if ! curl -fsS -u guest:guest "$RABBITMQ_MGMT_URL/api/overview" >/dev/null 2>&1; then
  "$ROOT/scripts/rabbitmq.sh"
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target msg-api msg-consumer bench_broker_ceiling \
    bench_fake_evolution >/dev/null
fi
BINS=("$API_BIN" "$CONSUMER_BIN" "$CEILING_BIN")
[ "$FAKE_KIND" = c ] && BINS+=("$FAKE_BIN")
for bin in "${BINS[@]}"; do
  [ -x "$bin" ] || die "$bin is missing: build first (cmake --build $BUILD_DIR)"
done

# --- run directory, topology, clean-up ------------------------------------------------------------

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/msg-bench-XXXXXX")
RES="$RUN_DIR/results"
mkdir -p "$RES"
PREFIX="bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
PIDS=()       # everything started, in start order
OK=0

stop_pid() {  # SIGTERM, wait up to 15 s, then SIGKILL; only our own children
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  # Daemons are gone, so nothing declares the topology again while it is deleted.
  if ! "$PY" "$CLIENT" cleanup --prefix "$PREFIX" >/dev/null 2>"$RUN_DIR/cleanup.err"; then
    say "bench: could not delete the RabbitMQ objects $PREFIX*: $(cat "$RUN_DIR/cleanup.err")" >&2
  fi
  if [ "$OK" = 1 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$RUN_DIR"
  else
    say "bench: run directory kept: $RUN_DIR" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$PY" "$CLIENT" free-port; }
seconds_since() { "$PY" -c 'import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))' "$(date +%s.%N)" "$1"; }
json_get() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# write_config FILE PREFIX API_PORT HEALTH_PORT FAKE_URL CACHE_MAX
write_config() {
  cat >"$1" <<EOF
# written by tests/bench/run.sh
broker:
  url: "$AMQP_URL"
  connection_name: msg-bench
topology:
  exchange: "$2"
  queue: "$2.send"
  retry_queue_prefix: "$2.retry"
  dead_letter_queue: "$2.dead"
  status_stream: "$2.status"
api:
  listen: 127.0.0.1:$3
  cache_max_tasks: $6
${BENCH_API_THREADS:+  threads: $BENCH_API_THREADS}
${SNAPSHOT_INTERVAL:+  snapshot_interval: $SNAPSHOT_INTERVAL}
consumer:
  prefetch: $PREFETCH
  health_listen: 127.0.0.1:$4
  shutdown_grace: 5s
evolution:
  url: "$5"
  api_key: bench-evolution-key
  instance: bench
retry:
  delays: [1s, 1s, 1s]
log:
  level: $LOG_LEVEL
  format: json
EOF
}

# start_daemon NAME BIN CONFIG READY_URL [TIMEOUT_S]: starts it with the config file as the only
# source (the variables that override the file are removed) and waits for READY_URL to answer
# 200 (up to TIMEOUT_S, default 60); READY_SECONDS is how long that took.
start_daemon() {
  local name=$1 bin=$2 cfg=$3 url=$4 limit=$((${5:-60} * 10)) pid i t0
  env -u AMQP_URL -u EVOLUTION_API_URL -u EVOLUTION_API_KEY -u EVOLUTION_INSTANCE_NAME \
    -u APP_HOST -u APP_PORT -u LOG_LEVEL -u MSG_CONFIG \
    "$bin" --config "$cfg" >>"$RUN_DIR/$name.log" 2>&1 &
  pid=$!
  t0=$(date +%s.%N)
  PIDS+=("$pid")
  for ((i = 0; i < limit; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$RUN_DIR/$name.log" >&2; die "$name exited at start-up"; }
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      LAST_PID=$pid
      READY_SECONDS=$(seconds_since "$t0")
      return 0
    fi
    sleep 0.1
  done
  tail -20 "$RUN_DIR/$name.log" >&2
  die "$name was not ready within $((limit / 10)) s ($url)"
}

start_fake() {
  local port_file="$RUN_DIR/fake.port" i
  rm -f "$port_file"  # a fake started before left its port there
  if [ "$FAKE_KIND" = c ]; then
    "$FAKE_BIN" --host 127.0.0.1 --port 0 --api-key bench-evolution-key --instances bench \
      --threads "$FAKE_THREADS" --port-file "$port_file" >"$RUN_DIR/fake.log" 2>&1 &
  else
    "$PY" "$FAKE_SCRIPT" --host 127.0.0.1 --port 0 --api-key bench-evolution-key \
      --instances bench --port-file "$port_file" >"$RUN_DIR/fake.log" 2>&1 &
  fi
  FAKE_PID=$!
  PIDS+=("$FAKE_PID")
  for ((i = 0; i < 100; i++)); do
    [ -s "$port_file" ] && break
    kill -0 "$FAKE_PID" 2>/dev/null || die "the fake Evolution API exited at start-up"
    sleep 0.1
  done
  [ -s "$port_file" ] || die "the fake Evolution API did not start"
  FAKE_URL="http://127.0.0.1:$(cat "$port_file")"
}

# run_wrk NAME CONNECTIONS DURATION SCRIPT URL: the report goes to $RES/NAME.txt, parsed to .json
run_wrk() {
  "$PY" "$CLIENT" run-cpu "$RES/$1.load.json" -- \
    wrk -t2 -c"$2" -d"$3" --latency -s "$4" "$5" >"$RES/$1.txt" 2>&1 || {
    cat "$RES/$1.txt" >&2
    die "wrk failed ($1)"
  }
  "$PY" "$CLIENT" wrk "$RES/$1.txt" >"$RES/$1.json"
}

print_wrk() {  # NAME LABEL
  "$PY" - "$RES/$1.json" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {sys.argv[2]}: {r['rps']} requests/s  p50 {r['p50_ms']} ms  p90 {r['p90_ms']} ms  "
      f"p99 {r['p99_ms']} ms  non-2xx {r['non2xx']}  socket errors {r['socket_errors']}")
EOF
}

rss_of() { "$PY" "$CLIENT" rss "$1"; }

# The broker's OS process: the one listening on the AMQP port (its CPU is read from /proc).
AMQP_PORT=$("$PY" -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port or 5672)' "$AMQP_URL")
BROKER_PID=$("$PY" "$CLIENT" listener-pid "$AMQP_PORT" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["pid"] or "")')
[ -n "$BROKER_PID" ] || die "no process listens on the AMQP port $AMQP_PORT (is the broker local?)"

# cpu_snap FILE NAME=PID...: each process's CPU seconds so far, as JSON
cpu_snap() {
  local out=$1
  shift
  "$PY" "$CLIENT" cpu "$@" >"$out"
}

say "== msg benchmark ($(nproc) CPUs, run $PREFIX, logs in $RUN_DIR)"

# --- 1. broker ceiling -----------------------------------------------------------------------------

say "-- broker ceiling: one rabbitmq-c connection, persistent ~200 B messages, quorum queue"
cpu_snap "$RES/ceiling.cpu0.json" broker="$BROKER_PID"
"$PY" "$CLIENT" run-cpu "$RES/ceiling.load.json" -- \
  "$CEILING_BIN" --url "$AMQP_URL" --count "$CEILING_COUNT" --window "$CEILING_WINDOW" \
  --queue "$PREFIX.ceiling" >"$RES/ceiling.txt"
cpu_snap "$RES/ceiling.cpu1.json" broker="$BROKER_PID"
# The same with at most 64 confirms in flight, as many as the accept run's 64 connections can
# have: what the broker's cost per message is at that pipelining depth, before any extra work.
"$CEILING_BIN" --url "$AMQP_URL" --count "$((CEILING_COUNT / 4))" --window 64 \
  --queue "$PREFIX.ceiling64" >"$RES/ceiling64.txt"
cpu_snap "$RES/ceiling64.cpu1.json" broker="$BROKER_PID"
sed -n 's/^BROKER_CEILING //p' "$RES/ceiling64.txt" >"$RES/ceiling64.json"
"$CEILING_BIN" --url "$AMQP_URL" --count "$CEILING1_COUNT" --window 1 \
  --queue "$PREFIX.ceiling1" >"$RES/ceiling1.txt"
sed -n 's/^BROKER_CEILING //p' "$RES/ceiling.txt" >"$RES/ceiling.json"
sed -n 's/^BROKER_CEILING //p' "$RES/ceiling1.txt" >"$RES/ceiling1.json"
say "  pipelined (window $CEILING_WINDOW): $(json_get "$RES/ceiling.json" msgs_per_s) messages/s"
say "  pipelined (window 64): $(json_get "$RES/ceiling64.json" msgs_per_s) messages/s"
say "  one confirm round trip per message (window 1): $(json_get "$RES/ceiling1.json" msgs_per_s) messages/s"

# --- 2. the fake Evolution API's own ceiling ------------------------------------------------------

start_fake
cat >"$RUN_DIR/fake.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["apikey"] = "bench-evolution-key"
wrk.body = '{"number":"52123456789","text":"bench fake ceiling"}'
EOF
say "-- fake Evolution API alone ($FAKE_LABEL; bounds the end-to-end figure at 0 ms latency)"
run_wrk fake 64 "$FAKE_DURATION" "$RUN_DIR/fake.lua" "$FAKE_URL/message/sendText/bench"
print_wrk fake "64 connections, ${FAKE_DURATION}"
curl -fsS -X POST "$FAKE_URL/_fake/reset" >/dev/null

# --- 3. accept throughput --------------------------------------------------------------------------

API_PORT=$(free_port)
HEALTH_PORT=$(free_port)
CFG="$RUN_DIR/bench.yaml"
write_config "$CFG" "$PREFIX" "$API_PORT" "$HEALTH_PORT" "$FAKE_URL" 1000000
API="http://127.0.0.1:$API_PORT"
start_daemon msg-api "$API_BIN" "$CFG" "$API/readyz"
API_PID=$LAST_PID

cat >"$RUN_DIR/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"phone":"+52123456789","message":"bench accept","instance_name":"bench"}'
EOF
say "-- accept: wrk POST /messages for $DURATION each, consumer not running (jobs pile up, then are purged)"
for conns in 16 64; do
  cpu_snap "$RES/accept$conns.cpu0.json" api="$API_PID" broker="$BROKER_PID"
  run_wrk "accept$conns" "$conns" "$DURATION" "$RUN_DIR/post.lua" "$API/messages"
  cpu_snap "$RES/accept$conns.cpu1.json" api="$API_PID" broker="$BROKER_PID"
  print_wrk "accept$conns" "$conns connections"
  "$PY" - "$RES" "accept$conns" <<'EOF'
import json, sys
d, n = sys.argv[1:]
w, c0, c1 = (json.load(open(f"{d}/{n}{x}.json")) for x in ("", ".cpu0", ".cpu1"))
load = json.load(open(f"{d}/{n}.load.json"))["seconds"]
req = w["requests"] or 0
us = {k: round((c1[k] - c0[k]) * 1e6 / req, 1) if req else None for k in c0}
us["load"] = round(load * 1e6 / req, 1) if req else None
json.dump(us, open(f"{d}/{n}.us.json", "w"))
print("    CPU per request: " + ", ".join(f"{k} {v} us" for k, v in us.items()))
EOF
done
rss_of "$API_PID" >"$RES/api_after_accept.json"
"$PY" "$CLIENT" purge --queue "$PREFIX.send" >/dev/null

# --- 4. end to end ---------------------------------------------------------------------------------

start_daemon msg-consumer "$CONSUMER_BIN" "$CFG" "http://127.0.0.1:$HEALTH_PORT/readyz"
CONSUMER_PID=$LAST_PID

e2e() {  # NAME COUNT LATENCY_MS
  say "-- end to end: $2 messages over $E2E_CONNS connections, fake latency $3 ms, one consumer (prefetch $PREFETCH)"
  "$PY" "$CLIENT" e2e --api "$API" --fake "$FAKE_URL" --count "$2" --conns "$E2E_CONNS" \
    --latency-ms "$3" --tag "$PREFIX-$1" --instance bench --timeout "$E2E_TIMEOUT" \
    --cpu api="$API_PID" --cpu consumer="$CONSUMER_PID" --cpu broker="$BROKER_PID" \
    --cpu fake="$FAKE_PID" >"$RES/$1.json"
  "$PY" - "$RES/$1.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {r['msgs_per_s']} messages/s: {r['fake_sent']} of {r['accepted']} accepted sent in {r['seconds']} s"
      f"{'' if r['complete'] else ' (TIMED OUT)'} (posting took {r['post_seconds']} s, {r['post_rps']} posts/s,"
      f" poster CPU {r['poster_cpu_seconds']} s;"
      f" {r['refused']} refused)")
n = r["fake_sent"]
print("  CPU per message: " + ", ".join(f"{k} {round(v * 1e6 / n, 1) if n and v is not None else None} us"
                                        for k, v in r["cpu_seconds"].items()))
print(f"  check: {r['tasks_checked']} tasks read back, {r['tasks_not_success']} not SUCCESS; "
      f"lost {r['lost']}, duplicated {r['duplicated']}, unexpected {r['unexpected']} -> "
      f"{'OK' if r['ok'] else 'FAILED'}")
EOF
}
e2e e2e0 "$E2E_COUNT" 0
e2e e2eslow "$E2E_SLOW_COUNT" "$SLOW_LATENCY_MS"

rss_of "$API_PID" >"$RES/api_rss.json"
rss_of "$CONSUMER_PID" >"$RES/consumer_rss.json"
curl -fsS "$API/health" >"$RES/api_health.json" || true
stop_pid "$CONSUMER_PID"
stop_pid "$API_PID"
stop_pid "$FAKE_PID"

# --- 5. msg-api memory with a full cache -----------------------------------------------------------

say "-- cache: $CACHE_TASKS SUCCESS status events fed to a fresh msg-api through its status stream"
CACHE_PREFIX="$PREFIX-cache"
CACHE_PORT=$(free_port)
CACHE_CFG="$RUN_DIR/cache.yaml"
CACHE_MAX=$((CACHE_TASKS > 1000000 ? CACHE_TASKS : 1000000))
write_config "$CACHE_CFG" "$CACHE_PREFIX" "$CACHE_PORT" "$(free_port)" "http://127.0.0.1:9" "$CACHE_MAX"
start_daemon msg-api-cache "$API_BIN" "$CACHE_CFG" "http://127.0.0.1:$CACHE_PORT/readyz"
CACHE_PID=$LAST_PID
rss_of "$CACHE_PID" >"$RES/cache_idle_rss.json"
CACHE_T0=$(date +%s.%N)
"$CEILING_BIN" --url "$AMQP_URL" --status-events "$CACHE_PREFIX.status" --count "$CACHE_TASKS" \
  --window 1000 >"$RES/cache_publish.txt"
sed -n 's/^BROKER_CEILING //p' "$RES/cache_publish.txt" >"$RES/cache_publish.json"
"$PY" "$CLIENT" health --api "http://127.0.0.1:$CACHE_PORT" --wait-tasks "$CACHE_TASKS" \
  --timeout 600 >"$RES/cache_wait.json"
CACHE_SECONDS=$("$PY" -c 'import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))' "$(date +%s.%N)" "$CACHE_T0")
echo "{\"seconds\": $CACHE_SECONDS}" >"$RES/cache_ingest.json"
rss_of "$CACHE_PID" >"$RES/cache_rss.json"
cpu_snap "$RES/cache.cpu.json" api="$CACHE_PID"
stop_pid "$CACHE_PID"
"$PY" - "$RES" <<'EOF'
import json, sys
d = sys.argv[1]
idle, full = json.load(open(f"{d}/cache_idle_rss.json")), json.load(open(f"{d}/cache_rss.json"))
pub, wait = json.load(open(f"{d}/cache_publish.json")), json.load(open(f"{d}/cache_wait.json"))
secs = json.load(open(f"{d}/cache_ingest.json"))["seconds"]
print(f"  published at {pub['msgs_per_s']} events/s (confirmed); cache held {wait['tasks']} tasks "
      f"{'' if wait['ok'] else '(TIMED OUT) '}{secs:.1f} s after publishing began "
      f"({wait['tasks'] / secs:.0f} events/s applied end to end)")
print(f"  msg-api RSS {idle['rss_kib'] / 1024:.1f} MiB empty -> {full['rss_kib'] / 1024:.1f} MiB "
      f"with {wait['tasks']} tasks (peak {full['hwm_kib'] / 1024:.1f} MiB)")
EOF

# --- 6. start-up on a long stream ------------------------------------------------------------------

say "-- boot: $BOOT_EVENTS status events ($BOOT_BATCH per stream message) already on the stream, then a new msg-api replica and a new msg-consumer start"
BOOT_PREFIX="$PREFIX-boot"
BOOT_PORT=$(free_port)
BOOT_HEALTH=$(free_port)
BOOT_CFG="$RUN_DIR/boot.yaml"
start_fake
BOOT_WRITER_PORT=$(free_port)
BOOT_WRITER_CFG="$RUN_DIR/boot-writer.yaml"
SNAPSHOT_INTERVAL=$BOOT_SNAPSHOT_INTERVAL \
  write_config "$BOOT_WRITER_CFG" "$BOOT_PREFIX" "$BOOT_WRITER_PORT" "$(free_port)" "$FAKE_URL" 1000000
write_config "$BOOT_CFG" "$BOOT_PREFIX" "$BOOT_PORT" "$BOOT_HEALTH" "$FAKE_URL" 1000000
BOOT_API="http://127.0.0.1:$BOOT_PORT"
BOOT_WRITER_API="http://127.0.0.1:$BOOT_WRITER_PORT"
# A first replica lives through the stream being filled, as one would in production, and writes
# the cache snapshots (at most every $BOOT_SNAPSHOT_INTERVAL); the bench waits until it has read
# the whole stream and written what its rule asks for, then starts the new replica.
start_daemon msg-api-boot-writer "$API_BIN" "$BOOT_WRITER_CFG" "$BOOT_WRITER_API/readyz"
BOOT_WRITER_PID=$LAST_PID
"$CEILING_BIN" --url "$AMQP_URL" --status-events "$BOOT_PREFIX.status" --count "$BOOT_EVENTS" \
  --batch "$BOOT_BATCH" --window 1000 >"$RES/boot_publish.txt"
sed -n 's/^BROKER_CEILING //p' "$RES/boot_publish.txt" >"$RES/boot_publish.json"
"$PY" "$CLIENT" wait-snapshot --api "$BOOT_WRITER_API" --timeout 900 >"$RES/boot_snapshot.json"
"$PY" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' \
  "$RES/boot_snapshot.json" || die "the writer replica wrote no snapshot covering the stream"
cpu_snap "$RES/boot_writer.cpu.json" writer="$BOOT_WRITER_PID"
start_daemon msg-api-boot "$API_BIN" "$BOOT_CFG" "$BOOT_API/readyz" 900
BOOT_API_PID=$LAST_PID
BOOT_API_SECONDS=$READY_SECONDS
cpu_snap "$RES/boot_api.cpu.json" api="$BOOT_API_PID"
rss_of "$BOOT_API_PID" >"$RES/boot_api_rss.json"
# One job waits in the queue; the consumer starts; the figure is start to the fake's first send.
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' \
  -d '{"phone":"+52123456789","message":"bench boot","instance_name":"bench"}' "$BOOT_API/messages" ||
  die "the boot replica did not accept a message"
env -u AMQP_URL -u EVOLUTION_API_URL -u EVOLUTION_API_KEY -u EVOLUTION_INSTANCE_NAME \
  -u APP_HOST -u APP_PORT -u LOG_LEVEL -u MSG_CONFIG \
  "$CONSUMER_BIN" --config "$BOOT_CFG" >>"$RUN_DIR/msg-consumer-boot.log" 2>&1 &
PIDS+=("$!")
BOOT_CONSUMER_PID=$!
"$PY" "$CLIENT" first-send --fake "$FAKE_URL" --timeout 900 >"$RES/boot_consumer.json"
cpu_snap "$RES/boot_consumer.cpu.json" consumer="$BOOT_CONSUMER_PID"
stop_pid "$BOOT_CONSUMER_PID"
"$PY" "$CLIENT" health-doc --api "$BOOT_API" >"$RES/boot_api_health.json"
stop_pid "$BOOT_API_PID"
stop_pid "$BOOT_WRITER_PID"
stop_pid "$FAKE_PID"
echo "{\"api_ready_seconds\": $BOOT_API_SECONDS}" >"$RES/boot_api.json"
"$PY" - "$RES" <<'EOF'
import json, sys
d = sys.argv[1]
pub, api, cons = (json.load(open(f"{d}/{n}.json")) for n in ("boot_publish", "boot_api", "boot_consumer"))
acpu = json.load(open(f"{d}/boot_api.cpu.json"))["api"]
rss = json.load(open(f"{d}/boot_api_rss.json"))
print(f"  stream filled at {pub['msgs_per_s']} events/s ({pub['count']} events in {pub['messages']} messages)")
snap = json.load(open(f"{d}/boot_snapshot.json"))
loaded = (json.load(open(f"{d}/boot_api_health.json")).get("snapshots") or {}).get("loaded") or {}
print(f"  the writer replica's last snapshot: {snap['tasks']} tasks written in {snap['seconds']:.1f} s "
      f"(offset {snap['status_offset']}, {snap['after']} events after it; {snap['written']} written during the fill)")
print(f"  new msg-api replica ready in {api['api_ready_seconds']} s ({acpu * 1e6 / pub['count']:.1f} us CPU per stream event, "
      f"RSS {rss['rss_kib'] / 1024:.1f} MiB): loaded {loaded.get('tasks')} tasks from the snapshot in "
      f"{loaded.get('seconds')} s, then the stream from offset {loaded.get('status_offset')}")
print(f"  new msg-consumer took its first job (the fake sent it) {cons['seconds']} s after start"
      f"{'' if cons['ok'] else ' (TIMED OUT)'}")
EOF

# --- summary ---------------------------------------------------------------------------------------

SUMMARY=$("$PY" - "$RES" "$(nproc)" "$PREFETCH" "$FAKE_KIND" <<'EOF'
import json, sys
d, cpus, prefetch, fake_kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def j(name):
    with open(f"{d}/{name}.json") as f:
        return json.load(f)
mib = lambda kib: round(kib / 1024, 1) if kib else None
c, c1, fake = j("ceiling"), j("ceiling1"), j("fake")
a16, a64, e0, es = j("accept16"), j("accept64"), j("e2e0"), j("e2eslow")
api, cons, after_accept = j("api_rss"), j("consumer_rss"), j("api_after_accept")
idle, full, wait = j("cache_idle_rss"), j("cache_rss"), j("cache_wait")
ingest = j("cache_ingest")["seconds"]
try:
    api_tasks = j("api_health")["cache"]["tasks"]
except (OSError, ValueError, KeyError):
    api_tasks = None
s = {
    "cpus": cpus,
    "broker_ceiling_msgs": c["msgs_per_s"], "broker_ceiling_window": c["window"],
    "broker_ceiling_window1_msgs": c1["msgs_per_s"],
    "fake": fake_kind, "fake_ceiling_rps": fake["rps"],
}
for n, a in (("16", a16), ("64", a64)):
    s.update({f"accept_rps_{n}": a["rps"], f"accept_p50_ms_{n}": a["p50_ms"],
              f"accept_p90_ms_{n}": a["p90_ms"], f"accept_p99_ms_{n}": a["p99_ms"],
              f"accept_non2xx_{n}": a["non2xx"], f"accept_socket_errors_{n}": a["socket_errors"]})
s["accept_64_vs_ceiling"] = round(a64["rps"] / c["msgs_per_s"], 3) if a64["rps"] and c["msgs_per_s"] else None
for tag, e in (("0ms", e0), (f"{int(es['latency_ms'])}ms", es)):
    s.update({f"e2e_msgs_{tag}": e["msgs_per_s"], f"e2e_count_{tag}": e["count"],
              f"e2e_accepted_{tag}": e["accepted"], f"e2e_lost_{tag}": e["lost"],
              f"e2e_duplicated_{tag}": e["duplicated"],
              f"e2e_not_success_{tag}": e["tasks_not_success"], f"e2e_ok_{tag}": e["ok"],
              f"e2e_post_rps_{tag}": e["post_rps"]})
s.update({
    "consumer_prefetch": prefetch,
    "api_peak_rss_mib": mib(api["hwm_kib"]), "api_cached_tasks_at_peak": api_tasks,
    "api_rss_after_accept_mib": mib(after_accept["rss_kib"]),
    "consumer_peak_rss_mib": mib(cons["hwm_kib"]),
    "api_rss_empty_mib": mib(idle["rss_kib"]),
    "cache_tasks": wait["tasks"], "api_rss_cache_mib": mib(full["rss_kib"]),
    "cache_ingest_ok": wait["ok"],
    "cache_ingest_events_per_s": round(wait["tasks"] / ingest) if ingest > 0 else None,
})
# CPU microseconds per request (accept) or per message (end to end) of each process, beside
# what the broker spends per message on a raw pipelined publish (the ceiling run).
per = lambda secs, n: round(secs * 1e6 / n, 1) if n and secs is not None else None
c0, c1 = j("ceiling.cpu0"), j("ceiling.cpu1")
s["broker_raw_publish_us"] = per(c1["broker"] - c0["broker"], c["count"])
s["ceiling_client_us"] = per(j("ceiling.load")["seconds"], c["count"])
s["broker_raw_publish_w64_us"] = per(j("ceiling64.cpu1")["broker"] - c1["broker"], j("ceiling64")["count"])
s["broker_ceiling_window64_msgs"] = j("ceiling64")["msgs_per_s"]
for n in ("16", "64"):
    for k, v in j(f"accept{n}.us").items():
        s[f"accept_cpu_us_{k}_{n}"] = v
s["accept_broker_vs_raw_64"] = (round(s["accept_cpu_us_broker_64"] / s["broker_raw_publish_us"], 2)
                                if s["accept_cpu_us_broker_64"] and s["broker_raw_publish_us"] else None)
s["accept_broker_vs_raw_w64_64"] = (round(s["accept_cpu_us_broker_64"] / s["broker_raw_publish_w64_us"], 2)
                                    if s["accept_cpu_us_broker_64"] and s["broker_raw_publish_w64_us"] else None)
for tag, e in (("0ms", e0), (f"{int(es['latency_ms'])}ms", es)):
    for k, v in e["cpu_seconds"].items():
        s[f"e2e_cpu_us_{k}_{tag}"] = per(v, e["fake_sent"])
boot_pub, boot_cons = j("boot_publish"), j("boot_consumer")
s.update({
    "boot_events": boot_pub["count"], "boot_stream_messages": boot_pub["messages"],
    "boot_api_ready_s": j("boot_api")["api_ready_seconds"],
    "boot_api_snapshot_tasks": ((j("boot_api_health").get("snapshots") or {}).get("loaded") or {}).get("tasks"),
    "boot_api_snapshot_load_s": ((j("boot_api_health").get("snapshots") or {}).get("loaded") or {}).get("seconds"),
    "boot_snapshot_write_s": j("boot_snapshot")["seconds"],
    "boot_events_after_snapshot": j("boot_snapshot")["after"],
    "boot_api_cpu_us_per_event": per(j("boot_api.cpu")["api"], boot_pub["count"]),
    "boot_api_rss_mib": mib(j("boot_api_rss")["rss_kib"]),
    "boot_consumer_first_job_s": boot_cons["seconds"], "boot_consumer_ok": boot_cons["ok"],
})
print(json.dumps(s))
EOF
)
"$PY" - "$SUMMARY" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
print("-- memory")
print(f"  msg-api peak RSS {s['api_peak_rss_mib']} MiB (cache then held {s['api_cached_tasks_at_peak']} tasks"
      f" from the runs above); msg-consumer peak RSS {s['consumer_peak_rss_mib']} MiB at prefetch {s['consumer_prefetch']}")
print(f"  msg-api RSS {s['api_rss_empty_mib']} MiB with an empty cache, {s['api_rss_cache_mib']} MiB with {s['cache_tasks']} tasks")
print("-- CPU per accepted request (accept, 64 connections) and per delivered message (end to end, 0 ms), in us")
print(f"  broker raw pipelined publish: {s['broker_raw_publish_us']} us per message (its client {s['ceiling_client_us']} us);"
      f" {s['broker_raw_publish_w64_us']} us at 64 in flight")
print(f"  accept:     msg-api {s['accept_cpu_us_api_64']}  broker {s['accept_cpu_us_broker_64']}"
      f" ({s['accept_broker_vs_raw_64']} x raw, {s['accept_broker_vs_raw_w64_64']} x raw at 64 in flight)  load generator {s['accept_cpu_us_load_64']}")
print(f"  end to end: msg-api {s['e2e_cpu_us_api_0ms']}  msg-consumer {s['e2e_cpu_us_consumer_0ms']}"
      f"  broker {s['e2e_cpu_us_broker_0ms']}  fake {s['e2e_cpu_us_fake_0ms']}  load generator {s['e2e_cpu_us_load_0ms']}")
print(f"  boot on {s['boot_events']} events: msg-api ready {s['boot_api_ready_s']} s, msg-consumer first job {s['boot_consumer_first_job_s']} s")
EOF
E2E_OK=$("$PY" -c 'import json,sys; s=json.loads(sys.argv[1]); print(int(all(v for k, v in s.items() if k.startswith("e2e_ok_")) and s["cache_ingest_ok"] and s["boot_consumer_ok"]))' "$SUMMARY")
say "BENCH_SUMMARY $SUMMARY"
OK=1
if [ "$E2E_OK" != 1 ]; then
  say "bench: the end-to-end check or the cache ingest FAILED (see above)" >&2
  if [ "${BENCH_STRICT:-0}" = 1 ]; then
    OK=0
    exit 3
  fi
fi
