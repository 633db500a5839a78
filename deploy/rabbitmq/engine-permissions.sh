#!/bin/sh
# The engine's broker permissions, least privilege: sourced by docker-entrypoint.sh (compose)
# and scripts/rabbitmq-private.sh (the tests run an engine with exactly these).
#   engine_permissions QUEUE_NAME  ->  sets ENGINE_CONFIGURE, ENGINE_WRITE, ENGINE_READ
# The engine declares its queue and `QUEUE_NAME.dead-letter` (configure), binds them to
# amq.topic (write on the queue, read on the exchange), consumes its queue (read) and
# publishes into amq.topic (write). Nothing else: no other queue, no other exchange, no
# management tag. Regexes, anchored; the queue name is escaped.
engine_permissions() {
  q=$(printf '%s' "$1" | sed 's/[].[^$*+?(){}|\\]/\\&/g')
  ENGINE_CONFIGURE="^${q}(\\.dead-letter)?\$"
  ENGINE_WRITE="^(amq\\.topic|${q}(\\.dead-letter)?)\$"
  ENGINE_READ="^(amq\\.topic|${q}(\\.dead-letter)?)\$"
}
