#!/usr/bin/env bash
# Start or stop a private RabbitMQ cluster of N nodes (default 3) on this machine, each node
# configured like production (scripts/rabbitmq-private.sh: MQTT, Web-MQTT, OAuth2/JWT), with
# private node names, ports, data dirs, one private Erlang cookie and one private epmd. The
# machine's own broker is never touched.
#
#   scripts/rabbitmq-cluster.sh start DIR [N]   # prints KEY=VALUE lines (below)
#   scripts/rabbitmq-cluster.sh stop DIR
#   scripts/rabbitmq-cluster.sh halt DIR K      # stop node K (1-based), keep its data
#   scripts/rabbitmq-cluster.sh resume DIR K    # start it again: it rejoins the cluster
#   scripts/rabbitmq-cluster.sh ctl DIR K ARGS… # rabbitmqctl against node K
#
# start prints, for every node K: NODE<K>, AMQP_URI<K>, AMQP_PORT<K>, MQTT_PORT<K>, WS_URL<K>;
# and AMQP_URIS (comma-separated, node 1 first), JWT_SECRET, JWT_KID, NODES. It reads
# JWT_SECRET, JWT_KID and WATCH_PID like rabbitmq-private.sh (WATCH_PID: the whole cluster
# stops, and DIR is removed, when that process exits).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
private="$here/rabbitmq-private.sh"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start DIR [N] | stop DIR | halt|resume DIR K | ctl DIR K ARGS…" >&2; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

value() { # value FILE KEY: a KEY=VALUE line's value
  sed -n "s/^$2=//p" "$1" | head -n 1
}

node_dir() {
  local k="${1:?node number}"
  [[ -f "$dir/node$k/node.env" || "$cmd" == start ]] || { echo "rabbitmq-cluster: no node $k in $dir" >&2; exit 2; }
  echo "$dir/node$k"
}

case "$cmd" in
  start)
    n="${3:-3}"
    [[ "$n" =~ ^[1-9]$ ]] || { echo "rabbitmq-cluster: N must be 1..9" >&2; exit 2; }
    export EPMD_PORT="${EPMD_PORT:-$(free_port)}"
    export ERLANG_COOKIE="chat21cluster$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export JWT_SECRET="${JWT_SECRET:-$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')}"
    export JWT_KID="${JWT_KID:-tiledesk-key}"
    export SHARED_EPMD=1
    # Each node's own reaper is off: the cluster's stops them together (and epmd last).
    watch="${WATCH_PID:-}"
    unset WATCH_PID
    echo "$n" > "$dir/nodes"
    for k in $(seq 1 "$n"); do
      KEEP_DIR=1 "$private" start "$dir/node$k" > "$dir/node$k.out"
    done
    first="$(value "$dir/node1.out" NODE)"
    for k in $(seq 2 "$n"); do
      # (rabbitmqctl's warnings about the reset node's feature flags go to the node's log dir.)
      for step in stop_app reset "join_cluster $first" start_app "await_startup --timeout 60"; do
        # shellcheck disable=SC2086 # the step's words are its arguments
        "$private" ctl "$dir/node$k" $step > /dev/null 2>> "$dir/node$k/log/join.err" \
          || { echo "rabbitmq-cluster: node $k: $step failed:" >&2; cat "$dir/node$k/log/join.err" >&2; exit 1; }
      done
    done
    # The listeners come back with the app; wait until every node accepts AMQP and MQTT.
    for k in $(seq 1 "$n"); do
      for key in AMQP_PORT MQTT_PORT WS_PORT; do
        port="$(value "$dir/node$k.out" "$key")"
        deadline=$((SECONDS + 60))
        until (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do
          ((SECONDS < deadline)) || { echo "rabbitmq-cluster: node $k port $port not open" >&2; exit 1; }
          sleep 0.2
        done
      done
    done
    running="$("$private" ctl "$dir/node1" eval 'length(rabbit_nodes:all_running()).')"
    [[ "$running" == "$n" ]] || { echo "rabbitmq-cluster: $running of $n nodes running" >&2; exit 1; }
    if [[ -n "$watch" ]]; then
      (
        trap '' HUP
        while kill -0 "$watch" 2> /dev/null && [[ -f "$dir/nodes" ]]; do sleep 1; done
        [[ -f "$dir/nodes" ]] && "$0" stop "$dir"
        [[ "${KEEP_DIR:-0}" == 1 ]] || rm -rf "$dir"
      ) > /dev/null 2>&1 < /dev/null &
      disown
    fi
    uris=()
    for k in $(seq 1 "$n"); do
      out="$dir/node$k.out"
      echo "NODE$k=$(value "$out" NODE)"
      echo "AMQP_URI$k=$(value "$out" AMQP_URI)"
      echo "AMQP_PORT$k=$(value "$out" AMQP_PORT)"
      echo "MQTT_PORT$k=$(value "$out" MQTT_PORT)"
      echo "WS_URL$k=$(value "$out" WS_URL)"
      uris+=("$(value "$out" AMQP_URI)")
    done
    (IFS=,; echo "AMQP_URIS=${uris[*]}")
    echo "JWT_SECRET=$JWT_SECRET"
    echo "JWT_KID=$JWT_KID"
    echo "NODES=$n"
    ;;
  halt)
    "$private" halt "$(node_dir "${3:-}")"
    ;;
  resume)
    "$private" resume "$(node_dir "${3:-}")"
    ;;
  ctl)
    node="$(node_dir "${3:-}")"
    shift 3
    "$private" ctl "$node" "$@"
    ;;
  stop)
    [[ -f "$dir/nodes" ]] || exit 0
    n="$(cat "$dir/nodes")"
    epmd_port=""
    for k in $(seq "$n" -1 1); do
      [[ -f "$dir/node$k/node.env" ]] || continue
      epmd_port="$(value "$dir/node$k/node.env" EPMD_PORT)"
      "$private" stop "$dir/node$k" || true
    done
    if [[ -n "$epmd_port" ]]; then
      "$(dirname "$(readlink -f "$(command -v epmd || echo /usr/bin/epmd)")")/epmd" -port "$epmd_port" -kill > /dev/null 2>&1 || true
    fi
    rm -f "$dir/nodes"
    ;;
  *)
    echo "usage: $0 start DIR [N] | stop DIR | halt|resume DIR K | ctl DIR K ARGS…" >&2
    exit 2
    ;;
esac
