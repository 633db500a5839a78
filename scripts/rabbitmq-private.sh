#!/usr/bin/env bash
# Start or stop a private RabbitMQ node configured exactly like production
# (deploy/rabbitmq: MQTT, Web-MQTT, OAuth2/JWT backend), on free loopback ports, with all of
# its state in one directory. It never touches the machine's own broker (its own node name,
# epmd port, cookie, config, data and logs).
#
#   scripts/rabbitmq-private.sh start DIR   # prints the node's settings as KEY=VALUE lines
#   scripts/rabbitmq-private.sh stop DIR
#   scripts/rabbitmq-private.sh restart DIR # same ports and data: a broker restart
#   scripts/rabbitmq-private.sh halt|resume DIR  # the two halves of restart
#   scripts/rabbitmq-private.sh ctl DIR ARGS…    # rabbitmqctl against the node
#
# start reads (all optional): JWT_SECRET (default: a random one, printed), JWT_KID
# (tiledesk-key), AMQP_PORT, MQTT_PORT, WS_PORT, MQTTS_PORT, WSS_PORT (TLS, with a private
# CA made in DIR/tls), DIST_PORT, EPMD_PORT (default: free ports),
# WATCH_PID (stop the node and remove DIR when that process exits: test harnesses use it so
# a crashed test never leaves a node behind; KEEP_DIR=1 keeps DIR), ERLANG_COOKIE and
# SHARED_EPMD=1 (for the nodes of one cluster, scripts/rabbitmq-cluster.sh: one cookie, one
# epmd that `stop` leaves running for the others). Settings are kept in DIR/node.env for
# stop/restart.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
deploy="$here/../deploy/rabbitmq"
RMQ_BIN="${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

node_env() {
  # shellcheck disable=SC1091
  . "$dir/node.env"
  export HOME="$dir/home"
  export RABBITMQ_NODENAME="$NODE"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$AMQP_PORT"
  export RABBITMQ_DIST_PORT="$DIST_PORT"
  export ERL_EPMD_PORT="$EPMD_PORT"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/etc/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$dir/etc/rabbitmq.conf"
  export RABBITMQ_CONFIG_FILES="$dir/etc/conf.d"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/etc/advanced.config"
  export RABBITMQ_CONF_ENV_FILE="$dir/etc/rabbitmq-env.conf"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
  export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
  unset RABBITMQ_ALLOW_INPUT # any value makes the node read stdin and die on EOF
}

write_config() {
  mkdir -p "$dir/etc/conf.d" "$dir/home" "$dir/mnesia" "$dir/log"
  cp "$deploy/rabbitmq.conf" "$dir/etc/rabbitmq.conf"
  # The management plugin is for the docker image; the test node does not need its HTTP port.
  echo '[rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_auth_backend_oauth2,rabbitmq_consistent_hash_exchange].' > "$dir/etc/enabled_plugins"
  : > "$dir/etc/rabbitmq-env.conf"
  cat > "$dir/etc/conf.d/10-listeners.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
mqtt.listeners.tcp.1 = 127.0.0.1:$MQTT_PORT
web_mqtt.tcp.ip = 127.0.0.1
web_mqtt.tcp.port = $WS_PORT
CONF
  # TLS as production enables it (deploy/rabbitmq/conf.d/30-tls.conf.example), with a
  # private CA made here and the loopback addresses of this node.
  mkdir -p "$dir/tls"
  if [[ ! -f "$dir/tls/cert.pem" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=chat21 test CA" \
      -keyout "$dir/tls/ca-key.pem" -out "$dir/tls/ca.pem" > /dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$dir/tls/key.pem" -out "$dir/tls/server.csr" > /dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$dir/tls/san.ext"
    openssl x509 -req -in "$dir/tls/server.csr" -CA "$dir/tls/ca.pem" -CAkey "$dir/tls/ca-key.pem" \
      -CAcreateserial -days 2 -extfile "$dir/tls/san.ext" -out "$dir/tls/cert.pem" > /dev/null 2>&1
  fi
  sed -e "s#/etc/rabbitmq/tls#$dir/tls#g" \
    -e "s#^mqtt.listeners.ssl.default = .*#mqtt.listeners.ssl.1 = 127.0.0.1:$MQTTS_PORT#" \
    -e "s#^web_mqtt.ssl.port = .*#web_mqtt.ssl.ip = 127.0.0.1\nweb_mqtt.ssl.port = $WSS_PORT#" \
    "$deploy/conf.d/30-tls.conf.example" > "$dir/etc/conf.d/30-tls.conf"
  JWT_SECRET="$JWT_SECRET" JWT_KID="$JWT_KID" \
    "$deploy/render-advanced-config.sh" "$deploy/advanced.config.template" "$dir/etc/advanced.config"
  printf '%s' "${ERLANG_COOKIE:-chat21test$RANDOM$RANDOM}" > "$dir/home/.erlang.cookie"
  chmod 400 "$dir/home/.erlang.cookie"
}

launch() {
  node_env
  # From DIR: whatever the node writes to its working directory (an Erlang or Mnesia core
  # dump) lands with the rest of its state, never in the caller's.
  (cd "$dir" && exec setsid "$RMQ_BIN/rabbitmq-server") > "$dir/log/launcher.out" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$dir/launcher.pid"
  # Wait for the node, but watch the launcher so a bad config fails in seconds.
  local deadline=$((SECONDS + 90))
  until "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q await_startup --timeout 2 > /dev/null 2>&1; do
    if ! kill -0 "$pid" 2> /dev/null; then
      echo "rabbitmq-private: node exited during start; last log lines:" >&2
      tail -n 30 "$dir/log/launcher.out" >&2 || true
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "rabbitmq-private: node did not start in 90 s" >&2
      exit 1
    fi
    sleep 0.5
  done
  # Web-MQTT and MQTT listeners come up with the plugins; wait until they accept.
  for port in "$MQTT_PORT" "$WS_PORT" "$MQTTS_PORT" "$WSS_PORT"; do
    until (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do sleep 0.2; done
  done
}

stop_node() {
  node_env
  "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q stop > /dev/null 2>&1 || true
  if [[ -f "$dir/launcher.pid" ]]; then
    local pid
    pid="$(cat "$dir/launcher.pid")"
    for _ in $(seq 1 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.2; done
    kill -9 -- "-$pid" 2> /dev/null || true
  fi
}

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop|restart|halt|resume DIR | engine-user DIR NAME PASSWORD QUEUE" >&2; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

case "$cmd" in
  start)
    AMQP_PORT="${AMQP_PORT:-$(free_port)}"
    MQTT_PORT="${MQTT_PORT:-$(free_port)}"
    WS_PORT="${WS_PORT:-$(free_port)}"
    MQTTS_PORT="${MQTTS_PORT:-$(free_port)}"
    WSS_PORT="${WSS_PORT:-$(free_port)}"
    DIST_PORT="${DIST_PORT:-$(free_port)}"
    EPMD_PORT="${EPMD_PORT:-$(free_port)}"
    JWT_SECRET="${JWT_SECRET:-$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')}"
    JWT_KID="${JWT_KID:-tiledesk-key}"
    NODE="chat21test-$$-$RANDOM@localhost"
    write_config
    cat > "$dir/node.env" <<ENV
NODE='$NODE'
AMQP_PORT=$AMQP_PORT
MQTT_PORT=$MQTT_PORT
WS_PORT=$WS_PORT
MQTTS_PORT=$MQTTS_PORT
WSS_PORT=$WSS_PORT
DIST_PORT=$DIST_PORT
EPMD_PORT=$EPMD_PORT
JWT_KID='$JWT_KID'
SHARED_EPMD=${SHARED_EPMD:-0}
ENV
    chmod 600 "$dir/node.env"
    launch
    # The engine's own user (a password login, like production), admin for tests and tools.
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q add_user chat21 chat21 > /dev/null
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q set_user_tags chat21 administrator > /dev/null
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q set_permissions -p / chat21 '.*' '.*' '.*' > /dev/null
    if [[ -n "${WATCH_PID:-}" ]]; then
      # Reaper: stop the node when the watched process is gone, whatever way it ended, and
      # remove its directory (the watcher's own temp-dir cleanup may never run: test
      # harnesses keep the node in a static). KEEP_DIR=1 keeps it for post-mortems.
      (
        trap '' HUP
        while kill -0 "$WATCH_PID" 2> /dev/null && [[ -f "$dir/node.env" ]]; do sleep 1; done
        [[ -f "$dir/node.env" ]] && "$0" stop "$dir"
        [[ "${KEEP_DIR:-0}" == 1 ]] || rm -rf "$dir"
      ) > /dev/null 2>&1 < /dev/null &
      disown
    fi
    cat <<OUT
NODE=$NODE
AMQP_URI=amqp://chat21:chat21@127.0.0.1:$AMQP_PORT/%2f
AMQP_PORT=$AMQP_PORT
MQTT_PORT=$MQTT_PORT
WS_PORT=$WS_PORT
WS_URL=ws://127.0.0.1:$WS_PORT/ws
MQTTS_PORT=$MQTTS_PORT
WSS_URL=wss://127.0.0.1:$WSS_PORT/ws
TLS_CA=$dir/tls/ca.pem
JWT_SECRET=$JWT_SECRET
JWT_KID=$JWT_KID
OUT
    ;;
  engine-user)
    # A user with exactly the permissions production gives the engine (compose's
    # docker-entrypoint.sh uses the same function), for the queue QUEUE.
    name="${3:?name}" password="${4:?password}" queue="${5:?queue}"
    # shellcheck source=../deploy/rabbitmq/engine-permissions.sh
    . "$deploy/engine-permissions.sh"
    engine_permissions "$queue"
    node_env
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q add_user "$name" "$password" > /dev/null
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q set_permissions -p / "$name" "$ENGINE_CONFIGURE" "$ENGINE_WRITE" "$ENGINE_READ" > /dev/null
    ;;
  ctl)
    # rabbitmqctl against this node: `ctl DIR ARGS…` (tests break a setting on purpose).
    node_env
    shift 2
    "$RMQ_BIN/rabbitmqctl" -n "$NODE" -q "$@"
    ;;
  restart)
    stop_node
    launch
    ;;
  halt)
    # Stop the node but keep its ports, data and settings for `resume`.
    stop_node
    ;;
  resume)
    launch
    ;;
  stop)
    [[ -f "$dir/node.env" ]] || exit 0
    stop_node
    if [[ "${SHARED_EPMD:-0}" != 1 ]]; then
      "$(dirname "$(readlink -f "$(command -v epmd || echo /usr/bin/epmd)")")/epmd" -port "$EPMD_PORT" -kill > /dev/null 2>&1 || true
    fi
    rm -f "$dir/node.env"
    ;;
  *)
    echo "usage: $0 start|stop|restart|halt|resume DIR" >&2
    exit 2
    ;;
esac
