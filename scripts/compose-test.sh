#!/usr/bin/env bash
# End-to-end check of the containers: builds every image of compose.yaml, brings the service up
# the way the README's quick start does, sends the quick start's message and waits for SUCCESS,
# scales the consumers to 3 and sees them in the management API, starts the "monitoring" profile
# (Prometheus) and sees it scrape the api, the 3 consumers and the broker's per-queue metrics
# with the alert rules loaded, then stops everything and checks that each container ended
# cleanly. Prints the image sizes and the seconds from `up`
# to the first SUCCESS. Root (or a member of the docker group); run by .ci/run.
#
#   scripts/compose-test.sh
#
# It starts dockerd when none answers (and stops it again at the end), makes the base images
# (deploy/docker/base-image.sh: pulled, or made from Debian's packages when no registry
# answers), and uses "docker compose" when that plugin exists, else Debian's docker-compose.
# It runs as its own compose project (msg-compose-test) on free published ports, so a service
# already running here, or the machine's own RabbitMQ on 5672/15672, is never touched; its
# containers, network and volume are removed at the end, also on failure (after printing the
# last lines of every log). COMPOSE_TEST_KEEP=1 leaves them running instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=msg-compose-test
SUCCESS_TIMEOUT=${COMPOSE_TEST_SUCCESS_TIMEOUT:-180}
export DOCKER_BUILDKIT=0          # the classic builder: BuildKit would fetch its frontend
T_START=$(date +%s)
PASSED=0
DOCKERD_PID=""

say() { printf 'compose-test: %s\n' "$*"; }
fail() {
  say "FAIL: $*" >&2
  exit 1
}
pass() {
  PASSED=$((PASSED + 1))
  say "ok: $*"
}

# ---- a Docker engine ----
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || fail "no dockerd: apt-get install docker.io"
  say "starting dockerd (log: /tmp/msg-compose-test-dockerd.log)"
  dockerd >/tmp/msg-compose-test-dockerd.log 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 /tmp/msg-compose-test-dockerd.log >&2; fail "dockerd did not start"; }
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  fail "neither 'docker compose' nor docker-compose: apt-get install docker-compose"
fi
say "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))," \
    "engine $(docker version -f '{{.Server.Version}}')"

# ---- ports nobody uses, and the project's environment ----
read -r APP_PORT RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT FAKE_EVOLUTION_PORT PROMETHEUS_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
export APP_PORT RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT FAKE_EVOLUTION_PORT PROMETHEUS_PORT
# The quick start's case: no Evolution API configured, so the fake must come up by itself.
unset EVOLUTION_API_URL AMQP_URL
export COMPOSE_PROJECT_NAME=$PROJECT
dc() { "${COMPOSE[@]}" -p "$PROJECT" -f compose.yaml "$@"; }
# The same with the monitoring profile's services (Prometheus) included.
dcm() { dc --profile monitoring "$@"; }
API=http://127.0.0.1:$APP_PORT
MGMT=http://127.0.0.1:$RABBITMQ_MANAGEMENT_PORT/api

cleanup() {
  rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    say "last lines of each service's log:" >&2
    dcm logs --no-color --tail 30 >&2 2>&1
  fi
  if [ "${COMPOSE_TEST_KEEP:-}" = 1 ]; then
    say "COMPOSE_TEST_KEEP=1: left running; stop with: ${COMPOSE[*]} -p $PROJECT down -v"
  else
    dcm down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  say "took $(( $(date +%s) - T_START )) s in all"
  exit "$rc"
}
trap cleanup EXIT
dcm down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an interrupted run

# ---- images ----
t=$(date +%s)
deploy/docker/base-image.sh
say "base images ready in $(( $(date +%s) - t )) s"
t=$(date +%s)
dcm build >/tmp/msg-compose-test-build.log 2>&1 ||
  { tail -40 /tmp/msg-compose-test-build.log >&2; fail "docker-compose build failed"; }
say "images built in $(( $(date +%s) - t )) s"
for image in debian:bookworm-slim debian:trixie-slim msg:local msg-rabbitmq:local \
             msg-fake-evolution:local msg-prometheus:local; do
  size=$(docker image inspect -f '{{.Size}}' "$image") || fail "no image $image"
  say "image size: $(awk -v s="$size" -v i="$image" 'BEGIN { printf "%-26s %6.1f MB", i, s / 1e6 }')"
done

# ---- up, and the quick start's message ----
http() { # METHOD URL [BODY] -> prints "STATUS BODY"
  curl -sS -o /tmp/msg-compose-test-body -w '%{http_code}' -X "$1" "$2" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} 2>/dev/null || printf '000'
  printf ' %s\n' "$(cat /tmp/msg-compose-test-body 2>/dev/null)"
}
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

MESSAGE='{"phone": "+52123456789", "message": "Hola Carlos", "instance_name": "mi_instancia"}'
send_and_wait() { # -> prints the task id once it is SUCCESS; fails on FAILURE or time-out
  local deadline=$(( $(date +%s) + SUCCESS_TIMEOUT )) reply code task status=""
  while :; do
    reply=$(http POST "$API/messages" "$MESSAGE")
    code=${reply%% *}
    [ "$code" = 202 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "POST /messages never answered 202 (last: $reply)"
    sleep 0.5
  done
  task=$(json 'd["task_id"]' <<<"${reply#* }")
  while [ "$(date +%s)" -lt "$deadline" ]; do
    reply=$(http GET "$API/tasks/$task")
    status=$(json 'd.get("status")' <<<"${reply#* }" 2>/dev/null || true)
    case "$status" in
      SUCCESS) echo "$task"; return 0 ;;
      FAILURE | CANCELLED) fail "task $task ended $status: ${reply#* }" ;;
    esac
    sleep 0.25
  done
  fail "task $task not SUCCESS within ${SUCCESS_TIMEOUT} s (last: $status ${reply#* })"
}

t_up=$(date +%s.%N)
dc up -d >/tmp/msg-compose-test-up.log 2>&1 ||
  { cat /tmp/msg-compose-test-up.log >&2; fail "${COMPOSE[*]} up failed"; }
task=$(send_and_wait)
t_success=$(date +%s.%N)
SECONDS_TO_SUCCESS=$(awk -v a="$t_up" -v b="$t_success" 'BEGIN { printf "%.1f", b - a }')
pass "task $task SUCCESS through the fake Evolution API"
say "seconds from up to the first SUCCESS: $SECONDS_TO_SUCCESS"

# Read whole, then searched: "logs | grep -q" fails under pipefail when grep stops reading
# before docker-compose has written everything (SIGPIPE).
fake_log=$(dc logs --no-color fake-evolution 2>&1)
grep -q "EVOLUTION_API_URL is not set" <<<"$fake_log" ||
  fail "the fake Evolution API did not say it stands in for EVOLUTION_API_URL"
fake_sent=$(curl -fsS "http://127.0.0.1:$FAKE_EVOLUTION_PORT/_fake/stats" | json 'd["sent"]')
[ "$fake_sent" = 1 ] || fail "the fake Evolution API sent $fake_sent messages, not 1"
pass "the fake said it stands in for Evolution API, and sent the message once"

# ---- non-root, read-only ----
for c in $(dcm ps -q); do
  read -r name user ro < <(docker inspect -f '{{.Name}} {{if .Config.User}}{{.Config.User}}{{else}}root{{end}} {{.HostConfig.ReadonlyRootfs}}' "$c")
  case "$user" in root | 0 | 0:*) fail "$name runs as root" ;; esac
  [ "$ro" = true ] || fail "$name has a writable root filesystem"
  uid=$(docker exec "$c" id -u 2>/dev/null || echo "?")
  [ "$uid" != 0 ] || fail "$name runs as uid 0"
done
pass "every container runs as a non-root user on a read-only root filesystem"

# ---- three consumers ----
dc up -d --no-recreate --scale msg-consumer=3 >>/tmp/msg-compose-test-up.log 2>&1 ||
  { cat /tmp/msg-compose-test-up.log >&2; fail "--scale msg-consumer=3 failed"; }
consumers=""
for _ in $(seq 1 120); do
  consumers=$(curl -fsS -u guest:guest "$MGMT/connections" 2>/dev/null | json \
    'sum(1 for c in d if c.get("client_properties", {}).get("connection_name", "").startswith("msg-consumer@"))' \
    2>/dev/null || true)
  queue=$(curl -fsS -u guest:guest "$MGMT/queues/%2f/messages.send" 2>/dev/null | json 'd["consumers"]' \
    2>/dev/null || true)
  [ "$consumers" = 3 ] && [ "$queue" = 3 ] && break
  sleep 0.5
done
[ "$consumers" = 3 ] && [ "$queue" = 3 ] ||
  fail "the management API shows $consumers msg-consumer connections, $queue consumers on messages.send (want 3)"
pass "the management API shows 3 msg-consumer connections and 3 consumers on messages.send"
task=$(send_and_wait)
pass "task $task SUCCESS with 3 consumers"

# ---- the monitoring profile: Prometheus scrapes everything, with the rules loaded ----
# The README's command is "docker-compose --profile monitoring up --build -d"; the images are
# built already, and the consumers stay 3.
dcm up -d --no-recreate --scale msg-consumer=3 >>/tmp/msg-compose-test-up.log 2>&1 ||
  { cat /tmp/msg-compose-test-up.log >&2; fail "--profile monitoring up failed"; }
PROM=http://127.0.0.1:$PROMETHEUS_PORT/api/v1
promq() { # PROMQL -> the sum of the instant vector's values ("none" when empty or unreachable)
  curl -fsS -G "$PROM/query" --data-urlencode "query=$1" 2>/dev/null | json \
    '"none" if not d["data"]["result"] else round(sum(float(s["value"][1]) for s in d["data"]["result"]))' \
    2>/dev/null || echo none
}
up_api="" up_consumers="" up_broker="" queue_ready="" delivered=""
for _ in $(seq 1 120); do
  up_api=$(promq 'sum(up{job="msg-api"})')
  up_consumers=$(promq 'sum(up{job="msg-consumer"})')
  up_broker=$(promq 'sum(up{job="rabbitmq"})')
  queue_ready=$(promq 'count(rabbitmq_queue_messages_ready{queue="messages.send"})')
  delivered=$(promq 'sum(msg_consumer_deliveries_total{outcome="success"})')
  [ "$up_api" = 1 ] && [ "$up_consumers" = 3 ] && [ "$up_broker" = 1 ] && [ "$queue_ready" = 1 ] &&
    [ "$delivered" = 2 ] && break
  sleep 1
done
[ "$up_api" = 1 ] && [ "$up_consumers" = 3 ] && [ "$up_broker" = 1 ] && [ "$queue_ready" = 1 ] &&
  [ "$delivered" = 2 ] ||
  fail "Prometheus: msg-api up $up_api (want 1), msg-consumer up $up_consumers (3), rabbitmq up" \
       "$up_broker (1), rabbitmq_queue_messages_ready{queue=\"messages.send\"} series $queue_ready (1)," \
       "successes $delivered (2)"
rules=$(curl -fsS "$PROM/rules" | json 'sum(len(g["rules"]) for g in d["data"]["groups"])' 2>/dev/null || echo 0)
[ "$rules" -ge 5 ] || fail "Prometheus loaded $rules alert rules, not the 5 of deploy/monitoring/alerts.yaml"
pass "Prometheus scrapes msg-api, 3 consumers and the broker's per-queue metrics, with $rules alert rules"
c=$(dcm ps -q prometheus)
read -r user ro < <(docker inspect -f '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}' "$c")
uid=$(docker exec "$c" id -u 2>/dev/null || echo "?")
[ -n "$user" ] && [ "$uid" != 0 ] && [ "$uid" != "?" ] && [ "$ro" = true ] ||
  fail "prometheus runs as '$user' (uid $uid), read-only root filesystem: $ro"
pass "prometheus runs as $user (uid $uid) on a read-only root filesystem"

# ---- a clean stop ----
t=$(date +%s)
dcm stop >/dev/null 2>&1 || fail "${COMPOSE[*]} stop failed"
bad=""
for c in $(dcm ps -a -q); do
  read -r name code < <(docker inspect -f '{{.Name}} {{.State.ExitCode}}' "$c")
  [ "$code" = 0 ] || bad+=" $name=$code"
done
[ -z "$bad" ] || fail "containers that did not exit 0 on SIGTERM:$bad"
pass "every container stopped on SIGTERM with exit status 0, in $(( $(date +%s) - t )) s"

say "summary: up to first SUCCESS ${SECONDS_TO_SUCCESS} s; images:" \
    "$(for i in msg:local msg-rabbitmq:local msg-fake-evolution:local msg-prometheus:local; do
         docker image inspect -f '{{.Size}}' "$i" | awk -v i="$i" '{ printf "%s %.0f MB; ", i, $1 / 1e6 }'
       done)"
say "$PASSED passed, 0 failed"
