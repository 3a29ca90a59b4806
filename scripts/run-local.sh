#!/usr/bin/env bash
# Quick start: installs what is missing, starts RabbitMQ (with the management UI), builds, and
# starts msg-consumer and msg-api in the background (logs and pids in run/). When
# EVOLUTION_API_URL is not set, a local fake Evolution API stands in for the real one.
#   scripts/run-local.sh          start everything
#   scripts/run-local.sh stop     stop what it started
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=run
mkdir -p "$RUN_DIR"

stop_all() {
  for name in msg-api msg-consumer fake-evolution; do
    if [ -f "$RUN_DIR/$name.pid" ]; then
      pid=$(cat "$RUN_DIR/$name.pid")
      if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        echo "stopped $name"
      fi
      rm -f "$RUN_DIR/$name.pid"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  exit 0
fi

scripts/deps.sh
scripts/rabbitmq.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
stop_all

wait_http() { # url what log
  for _ in $(seq 1 100); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not become ready; last lines of $3:" >&2
  tail -20 "$3" >&2
  exit 1
}

if [ -z "${EVOLUTION_API_URL:-}" ]; then
  export EVOLUTION_API_URL=http://127.0.0.1:8080
  export EVOLUTION_API_KEY=${EVOLUTION_API_KEY:-local-dev-key}
  echo "EVOLUTION_API_URL is not set: starting the fake Evolution API on $EVOLUTION_API_URL"
  echo "  (it accepts every instance name used below and answers like Evolution API v2)"
  nohup python3 tests/fake/fake_evolution.py --host 127.0.0.1 --port 8080 \
    --api-key "$EVOLUTION_API_KEY" --instances "default,mi_instancia,${EVOLUTION_INSTANCE_NAME:-default}" \
    >"$RUN_DIR/fake-evolution.log" 2>&1 &
  echo $! >"$RUN_DIR/fake-evolution.pid"
  wait_http http://127.0.0.1:8080/ "fake Evolution API" "$RUN_DIR/fake-evolution.log"
fi

nohup build/consumer/msg-consumer --config config/service.yaml >"$RUN_DIR/msg-consumer.log" 2>&1 &
echo $! >"$RUN_DIR/msg-consumer.pid"
nohup build/api/msg-api --config config/service.yaml >"$RUN_DIR/msg-api.log" 2>&1 &
echo $! >"$RUN_DIR/msg-api.pid"
wait_http http://127.0.0.1:8002/readyz msg-consumer "$RUN_DIR/msg-consumer.log"
wait_http http://127.0.0.1:8001/readyz msg-api "$RUN_DIR/msg-api.log"

cat <<MSG

The service is running:
  API             http://localhost:8001   (GET /health for details)
  consumer health http://localhost:8002/health
  RabbitMQ UI     http://localhost:15672  (guest / guest)
  logs            $RUN_DIR/*.log

Send a message:
  curl -X POST http://localhost:8001/messages -H 'Content-Type: application/json' \\
    -d '{"phone": "+52123456789", "message": "Hola Carlos", "instance_name": "mi_instancia"}'
Then: curl http://localhost:8001/tasks/<task_id>

Stop everything with: scripts/run-local.sh stop
MSG
