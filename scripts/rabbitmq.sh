#!/usr/bin/env bash
# Starts the local RabbitMQ broker with the management plugin (UI on http://localhost:15672)
# and waits until it accepts connections. Does nothing when it is already running.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

if $SUDO rabbitmqctl -q status >/dev/null 2>&1; then
  exit 0
fi

# The broker settings msg relies on (deploy/rabbitmq/advanced.config says why), unless the
# machine has an advanced.config of its own: that one is left alone, with a warning.
ADVANCED=/etc/rabbitmq/advanced.config
OURS="$(cd "$(dirname "$0")/.." && pwd)/deploy/rabbitmq/advanced.config"
if [ ! -e "$ADVANCED" ]; then
  $SUDO install -m 644 "$OURS" "$ADVANCED"
elif ! cmp -s "$OURS" "$ADVANCED"; then
  echo "warning: $ADVANCED is not msg's; see deploy/rabbitmq/advanced.config for the setting it needs" >&2
fi

# --offline works while the node is down, so the plugin is on from the first boot.
$SUDO rabbitmq-plugins enable --offline rabbitmq_management >/dev/null

if [ -d /run/systemd/system ]; then
  $SUDO systemctl start rabbitmq-server
elif [ -x /etc/init.d/rabbitmq-server ]; then
  $SUDO /etc/init.d/rabbitmq-server start >/dev/null
else
  $SUDO rabbitmq-server -detached
fi

echo "Waiting for RabbitMQ..."
$SUDO timeout 120 rabbitmqctl await_startup >/dev/null
# The management listener comes up a moment after the node.
for _ in $(seq 1 60); do
  if curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
echo "RabbitMQ is running (management UI: http://localhost:15672, guest/guest)"
