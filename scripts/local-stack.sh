#!/usr/bin/env bash
# One command to a running local stack: a private RabbitMQ node configured exactly like
# production (scripts/rabbitmq-private.sh: MQTT, Web-MQTT, OAuth2/JWT, the consistent-hash
# exchange), the engine against it with its least-privilege broker user
# (deploy/rabbitmq/engine-permissions.sh) and the embedded SQLite store, and what a person
# needs next printed: MQTT and Web-MQTT URLs, two user tokens, the HTTP API, a test message.
# Ctrl-C (or SIGTERM) stops the engine and the broker and removes their directory; if this
# script is killed outright, the broker's reaper still stops the node and removes it.
#
#   scripts/local-stack.sh
#
# Needs the RabbitMQ server package (as the tests do) and a built engine: it runs
# `cargo build --release --bin chat21-engine` first unless ENGINE_BIN names a binary.
# Optional: APP_ID (tilechat), HTTP_PORT (8004, or a free port when 8004 is taken),
# STACK_DIR (default: a new temp dir), KEEP_DIR=1 (keep it, with the logs, after stopping).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
app="${APP_ID:-tilechat}"
queue="chat21.engine"
dir="${STACK_DIR:-$(mktemp -d /tmp/chat21-stack.XXXXXX)}"
mkdir -p "$dir"
engine_pid=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
port_taken() {
  python3 -c 'import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1",int(sys.argv[1])))==0 else 1)' "$1"
}

stopped=0
cleanup() {
  [[ $stopped == 1 ]] && return
  stopped=1
  if [[ -n "$engine_pid" ]] && kill -0 "$engine_pid" 2> /dev/null; then
    kill -TERM "$engine_pid" 2> /dev/null || true
    wait "$engine_pid" 2> /dev/null || true
  fi
  "$here/rabbitmq-private.sh" stop "$dir" > /dev/null 2>&1 || true
  if [[ "${KEEP_DIR:-0}" == 1 ]]; then
    echo "stopped; logs kept in $dir" >&2
  else
    rm -rf "$dir"
    echo "stopped; nothing left running" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bin="${ENGINE_BIN:-}"
if [[ -z "$bin" ]]; then
  echo "building the engine (cargo build --release)…" >&2
  (cd "$root" && cargo build --release --quiet --bin chat21-engine)
  bin="$root/target/release/chat21-engine"
fi

echo "starting a private RabbitMQ node in $dir…" >&2
WATCH_PID=$$ KEEP_DIR="${KEEP_DIR:-0}" "$here/rabbitmq-private.sh" start "$dir" > "$dir/broker.env"
# shellcheck disable=SC1091
. "$dir/broker.env"
engine_password="$(head -c 18 /dev/urandom | base64 | tr -d '\n/+=')"
"$here/rabbitmq-private.sh" engine-user "$dir" chat21-engine "$engine_password" "$queue"

http_port="${HTTP_PORT:-8004}"
if port_taken "$http_port"; then
  http_port="$(free_port)"
fi

export RABBITMQ_URI="amqp://chat21-engine:$engine_password@127.0.0.1:$AMQP_PORT/%2f"
export JWT_SECRET JWT_KID
export APP_ID="$app" QUEUE_NAME="$queue" HTTP_PORT="$http_port" HTTP_HOST=127.0.0.1
export DATABASE_URL="sqlite://$dir/chat21.db" PRESENCE_ENABLED=true
"$bin" serve > "$dir/engine.log" 2>&1 &
engine_pid=$!

for _ in $(seq 1 120); do
  if ! kill -0 "$engine_pid" 2> /dev/null; then
    echo "the engine exited; its log:" >&2
    tail -n 20 "$dir/engine.log" >&2
    exit 1
  fi
  if python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://127.0.0.1:$http_port/readyz" 2> /dev/null; then
    break
  fi
  sleep 0.5
done

alice="$("$bin" token alice)"
bob="$("$bin" token bob)"
api="http://127.0.0.1:$http_port/api/$app"

cat <<OUT
chat21 local stack is up (engine pid $engine_pid, broker and store in $dir)

  MQTT        mqtt://127.0.0.1:$MQTT_PORT       (username JWT, password: a token below)
  Web-MQTT    $WS_URL
  HTTP API    $api
  ops         http://127.0.0.1:$http_port/readyz  /metrics
  engine log  $dir/engine.log

  export ALICE=$alice
  export BOB=$bob

Send alice → bob, then read bob's history:
  curl -s -H "Authorization: Bearer \$ALICE" -H 'Content-Type: application/json' -d '{"recipient_id":"bob","text":"hello"}' $api/messages
  curl -s -H "Authorization: Bearer \$BOB" $api/bob/conversations/alice/messages

Ctrl-C stops everything.
OUT

wait "$engine_pid"
