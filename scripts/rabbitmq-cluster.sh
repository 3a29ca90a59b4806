#!/usr/bin/env bash
# Runs a local 3-node RabbitMQ cluster beside the machine's default node, to try node failures.
#
# Usage: scripts/rabbitmq-cluster.sh COMMAND
#   start         starts msg1@localhost, msg2@localhost and msg3@localhost, joins msg2 and msg3
#                 to msg1, waits until all three run and answer on their management ports, then
#                 prints the AMQP URLs, comma-separated. When the cluster is already up it only
#                 prints them; a node that is down is started again. About 20 s the first time
#                 (msg2 and msg3, in parallel, join msg1 as they boot), 15 s with data.
#   urls          prints the AMQP URLs, comma-separated (amqp://guest:guest@127.0.0.1:5681/%2f,...)
#   status        the cluster's status (rabbitmqctl cluster_status on the first node that answers)
#   kill N        SIGKILLs the Erlang VM of node N (1, 2 or 3): a crash, not a shutdown
#   revive N      starts node N again and waits until it has rejoined the cluster and runs
#   stop [--clean]  stops the three nodes; --clean also deletes their data and logs
#
# Node N listens for AMQP on 127.0.0.1:568N, for the management API/UI on 1568N (guest/guest)
# and for Erlang distribution on 2568N. Environment (defaults in brackets):
#   MSG_CLUSTER_DIR         [/tmp/msg-rabbitmq-cluster] everything of the three nodes: msgN/
#                           holds rabbitmq.conf, enabled_plugins, mnesia/, log/, pid, home/
#   CLUSTER_BASE_PORT       [5680]  AMQP port of node N is this + N
#   CLUSTER_MGMT_BASE_PORT  [15680] management port of node N is this + N
#   CLUSTER_DIST_BASE_PORT  [25680] Erlang distribution port of node N is this + N
#   CLUSTER_CTL_BASE_PORT   [35690] rabbitmqctl's own distribution ports: 10 per node from here
#   CLUSTER_TIMEOUT         [120]   seconds to wait for a node to start
# Each node has its own HOME holding an Erlang cookie shared by the three and different from
# the default node's, so the cluster and the machine's node (5672/15672) can never reach each
# other. Runs as root (CI); anyone else goes through sudo, as scripts/rabbitmq.sh does.
set -euo pipefail

VARS="MSG_CLUSTER_DIR,CLUSTER_BASE_PORT,CLUSTER_MGMT_BASE_PORT,CLUSTER_DIST_BASE_PORT,CLUSTER_CTL_BASE_PORT,CLUSTER_TIMEOUT"
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env="$VARS" -- "$(readlink -f "$0")" "$@"
fi

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${MSG_CLUSTER_DIR:-/tmp/msg-rabbitmq-cluster}"
AMQP_BASE="${CLUSTER_BASE_PORT:-5680}"
MGMT_BASE="${CLUSTER_MGMT_BASE_PORT:-15680}"
DIST_BASE="${CLUSTER_DIST_BASE_PORT:-25680}"
CTL_BASE="${CLUSTER_CTL_BASE_PORT:-35690}"
TIMEOUT="${CLUSTER_TIMEOUT:-120}"
NODES=(1 2 3)
# Node names and ports are the machine's, whatever the directory: one command at a time.
LOCK=/tmp/msg-rabbitmq-cluster.lock
# The packaged scripts themselves: /usr/sbin's wrappers switch to the rabbitmq user and drop
# the environment that tells the nodes apart.
RMQ_BIN=/usr/lib/rabbitmq/bin
if [ ! -x "$RMQ_BIN/rabbitmq-server" ]; then
  RMQ_BIN="$(dirname "$(readlink -f "$(command -v rabbitmq-server || echo /nonexistent)")")"
fi

usage() {
  sed -n '3,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "rabbitmq-cluster: $*" >&2
  exit 1
}

node_name() { echo "msg$1@localhost"; }
node_dir() { echo "$DIR/msg$1"; }
mgmt_port() { echo $((MGMT_BASE + $1)); }

# Sets NODE_ENV to the whole environment of node N's RabbitMQ scripts: nothing from the caller's
# RABBITMQ_* or the machine's rabbitmq-env.conf and advanced.config leaks in.
set_node_env() {
  local n="$1" d
  d="$(node_dir "$n")"
  NODE_ENV=(PATH="$PATH" LANG=C.UTF-8 LC_ALL=C.UTF-8 HOME="$d/home"
    RABBITMQ_NODENAME="$(node_name "$n")"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT=$((AMQP_BASE + n))
    RABBITMQ_DIST_PORT=$((DIST_BASE + n))
    RABBITMQ_CTL_DIST_PORT_MIN=$((CTL_BASE + 10 * (n - 1)))
    RABBITMQ_CTL_DIST_PORT_MAX=$((CTL_BASE + 10 * (n - 1) + 9))
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$d/mnesia"
    RABBITMQ_LOG_BASE="$d/log"
    RABBITMQ_PID_FILE="$d/pid")
}

ctl() {
  local n="$1" NODE_ENV
  shift
  set_node_env "$n"
  timeout "$TIMEOUT" env -i "${NODE_ENV[@]}" "$RMQ_BIN/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
}

# The files a node reads at boot. Written every time, so changed ports take effect.
prepare_node() {
  local n="$1" d
  d="$(node_dir "$n")"
  mkdir -p "$d/home" "$d/mnesia" "$d/log"
  if [ ! -s "$DIR/cookie" ]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -dc 'a-f0-9' | tr 'a-f0-9' 'A-P' >"$DIR/cookie")
  fi
  install -m 400 "$DIR/cookie" "$d/home/.erlang.cookie"
  cat >"$d/rabbitmq.conf" <<EOF
# Node msg$n of scripts/rabbitmq-cluster.sh (rewritten at each start).
listeners.tcp.default = 127.0.0.1:$((AMQP_BASE + n))
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
# guest/guest may log in from loopback (RabbitMQ's default, written out: the tests rely on it).
loopback_users.guest = true
log.console = false
log.file.level = info
EOF
  if [ "$n" -ne 1 ]; then
    # A fresh node joins msg1 at its first boot (classic peer discovery; start launches it
    # once msg1 runs): that saves the stop_app/join_cluster/start_app round (about 12 s here),
    # which start still does for a node that came up on its own. A node with data ignores this.
    cat >>"$d/rabbitmq.conf" <<EOF
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(node_name 1)
cluster_formation.discovery_retry_limit = 240
cluster_formation.discovery_retry_interval = 500
EOF
  fi
  cp "$ROOT_DIR/deploy/rabbitmq/advanced.config" "$d/advanced.config"
  echo '[rabbitmq_management].' >"$d/enabled_plugins"
  : >"$d/rabbitmq-env.conf"
}

# The OS pid of node N's Erlang VM when it is alive, else nothing (status 1). The node name is
# not on beam.smp's command line, its HOME is.
node_pid() {
  local pidfile pid
  pidfile="$(node_dir "$1")/pid"
  [ -s "$pidfile" ] || return 1
  pid="$(tr -dc 0-9 <"$pidfile")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # rabbitmqctl's own VM has the same HOME, but does not boot rabbit.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- " -home $(node_dir "$1")/home " \
    | grep -qF -- " -s rabbit boot " || return 1
  echo "$pid"
}

mgmt() {
  curl -fsS -m 5 -u guest:guest "http://127.0.0.1:$(mgmt_port "$1")$2" 2>/dev/null
}

# Node N answers on its management port (its rabbit application runs).
mgmt_up() {
  mgmt "$1" /api/overview >/dev/null
}

# The names of the cluster's running nodes as node N sees them, one a line.
running_nodes() {
  mgmt "$1" '/api/nodes?columns=name,running' \
    | python3 -c 'import json,sys; print("\n".join(n["name"] for n in json.load(sys.stdin) if n.get("running")))' \
      2>/dev/null
}

# Node N has msg1 among its cluster's nodes (running or not).
clustered() {
  mgmt "$1" '/api/nodes?columns=name' | grep -q "\"$(node_name 1)\""
}

all_up() {
  local n
  for n in "${NODES[@]}"; do
    mgmt_up "$n" || return 1
  done
  [ "$(running_nodes 1 | grep -c '^msg[123]@localhost$')" -eq 3 ]
}

launch() {
  local n="$1" d NODE_ENV
  d="$(node_dir "$n")"
  prepare_node "$n"
  set_node_env "$n"
  rm -f "$d/pid"
  # exec all the way down (env, setsid, the script, erl, beam.smp): no shell stays behind
  # holding the caller's stdout, so "$(scripts/rabbitmq-cluster.sh start)" returns. A session
  # of its own: a Ctrl-C at the caller's terminal does not reach the node. The node writes the
  # pid of its VM to $d/pid. It must not inherit the lock (fd 9) either.
  (cd "$d" && exec env -i "${NODE_ENV[@]}" setsid "$RMQ_BIN/rabbitmq-server" \
    >"$d/log/startup.log" 2>&1 </dev/null 9>&-) &
}

wait_mgmt() {
  local n="$1" deadline=$((SECONDS + TIMEOUT)) log
  log="$(node_dir "$n")/log/startup.log"
  until mgmt_up "$n"; do
    if grep -q '^BOOT FAILED' "$log" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "rabbitmq-cluster: msg$n did not start (see $(node_dir "$n")/log/; \"stop --clean\"" \
        "then start begins afresh); $log ends with:" >&2
      tail -n 15 "$log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# Node N has no data yet (never booted, or deleted by stop --clean).
fresh() {
  [ -z "$(ls -A "$(node_dir "$1")/mnesia/$(node_name "$1")" 2>/dev/null)" ]
}

# The first boot of node N (2 or 3), which joins msg1 as it boots. Two nodes joining at once can
# trip over each other in Mnesia; the one that failed starts again from nothing, once.
first_boot() {
  local n="$1"
  launch "$n"
  wait_mgmt "$n" 2>/dev/null && return 0
  echo "rabbitmq-cluster: msg$n failed its first boot; starting it again from nothing" >&2
  ctl 1 forget_cluster_node "$(node_name "$n")" >/dev/null 2>&1 || true
  rm -rf "$(node_dir "$n")/mnesia"
  launch "$n"
  wait_mgmt "$n"
}

# Node N (2 or 3) leaves its own fresh cluster of one and joins msg1's.
join() {
  local n="$1"
  ctl "$n" stop_app >/dev/null
  ctl "$n" join_cluster "$(node_name 1)" >/dev/null
  ctl "$n" start_app >/dev/null
  wait_mgmt "$n"
}

# Waits until node N runs as a member of the cluster, as msg1 (or, msg1 being down, any node
# that answers) sees it.
wait_member() {
  local n="$1" deadline=$((SECONDS + TIMEOUT)) m
  while :; do
    for m in "${NODES[@]}"; do
      if running_nodes "$m" 2>/dev/null | grep -qx "$(node_name "$n")"; then
        return 0
      fi
    done
    [ "$SECONDS" -lt "$deadline" ] || die "msg$n did not rejoin the cluster within ${TIMEOUT}s"
    sleep 0.2
  done
}

urls() {
  local n out=""
  for n in "${NODES[@]}"; do
    out="${out:+$out,}amqp://guest:guest@127.0.0.1:$((AMQP_BASE + n))/%2f"
  done
  echo "$out"
}

check_n() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) usage ;;
  esac
}

cmd_start() {
  local n pids=() failed=0
  if all_up; then
    urls
    return 0
  fi
  [ -x "$RMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server is not installed"
  mkdir -p "$DIR"
  # Every node that is down starts at once (booting is most of the time, and the nodes of an
  # existing cluster wait at boot for their peers anyway), except fresh nodes 2 and 3: they
  # join msg1 as they boot, and joining a node still in its own first boot can fail (its
  # tables are not upgraded yet: schema_integrity_check_failed), so they wait for msg1.
  local later=()
  for n in "${NODES[@]}"; do
    if ! node_pid "$n" >/dev/null; then
      if [ "$n" -ne 1 ] && fresh "$n"; then
        later+=("$n")
      else
        launch "$n"
      fi
    fi
  done
  if [ "${#later[@]}" -gt 0 ]; then
    wait_mgmt 1 || die "msg1 did not start"
  fi
  for n in "${later[@]}"; do
    first_boot "$n" &
    pids+=($!)
  done
  for n in "${NODES[@]}"; do
    case " ${later[*]} " in
      *" $n "*) ;;  # first_boot waits for it
      *)
        wait_mgmt "$n" &
        pids+=($!)
        ;;
    esac
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [ "$failed" -eq 0 ] || die "a node did not start"
  pids=()
  for n in 2 3; do
    if ! clustered "$n"; then
      join "$n" &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [ "$failed" -eq 0 ] || die "a node did not join msg1"
  for n in "${NODES[@]}"; do
    wait_member "$n"
  done
  urls
}

cmd_kill() {
  local n="$1" pid
  pid="$(node_pid "$n" || true)"
  if [ -z "$pid" ] && mgmt_up "$n"; then
    pid="$(ctl "$n" eval 'os:getpid().' | tr -dc 0-9)"
  fi
  [ -n "$pid" ] || die "msg$n is not running"
  kill -KILL "$pid"
  # Gone once /proc says so: the caller may look at the survivors at once.
  while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    sleep 0.05
  done
  echo "killed msg$n (pid $pid)"
}

cmd_revive() {
  local n="$1"
  if ! node_pid "$n" >/dev/null; then
    launch "$n"
  fi
  wait_mgmt "$n"
  wait_member "$n"
  echo "msg$n is running in the cluster"
}

cmd_stop() {
  local n pid deadline pids=() vms=()
  for n in "${NODES[@]}"; do
    pid="$(node_pid "$n" || true)"
    if [ -n "$pid" ] || mgmt_up "$n"; then
      vms+=("$pid")
      ctl "$n" stop >/dev/null &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || true
  done
  # "stop" returns when the node has agreed to stop; its VM exits a moment later.
  deadline=$((SECONDS + 30))
  for pid in "${vms[@]}"; do
    while [ -n "$pid" ] && [ -e "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ] \
      && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
      sleep 0.1
    done
  done
  for n in "${NODES[@]}"; do
    if pid="$(node_pid "$n")"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    ! mgmt_up "$n" || die "msg$n is still running"
  done
}

cmd_status() {
  local n
  for n in "${NODES[@]}"; do
    if mgmt_up "$n" && ctl "$n" cluster_status; then
      return 0
    fi
  done
  die "no node of the cluster is running ($DIR)"
}

if [ "${1:-}" != urls ]; then
  exec 9>"$LOCK"
  flock -w "$((TIMEOUT * 2))" 9 || die "another rabbitmq-cluster.sh has held $LOCK for too long"
fi

case "${1:-}" in
  start) cmd_start ;;
  urls) urls ;;
  status) cmd_status ;;
  kill) check_n "${2:-}"; cmd_kill "$2" ;;
  revive) check_n "${2:-}"; cmd_revive "$2" ;;
  stop)
    cmd_stop
    if [ "${2:-}" = "--clean" ]; then
      rm -rf "$DIR"
    elif [ -n "${2:-}" ]; then
      usage
    fi
    ;;
  *) usage ;;
esac
