#!/bin/sh
# The engine's broker permissions, least privilege: sourced by docker-entrypoint.sh (compose)
# and scripts/rabbitmq-private.sh (the tests run an engine with exactly these).
#   engine_permissions QUEUE_NAME  ->  sets ENGINE_CONFIGURE, ENGINE_WRITE, ENGINE_READ
# The engine declares its partition queues `QUEUE_NAME.p00`…`.p99`, the consistent-hash
# exchange `QUEUE_NAME.partitions` that feeds them, `QUEUE_NAME.dead-letter` and one
# exclusive reply queue per connection `QUEUE_NAME.reply.<uuid>` (where the HTTP API hears
# that an input it submitted was settled), and with webhooks on, each endpoint's
# `QUEUE_NAME.webhooks.<10 hex>` and `….failed` (configure); binds the exchange to amq.topic and
# the queues to it (write on the destination, read on the source), consumes them (read) and
# publishes into amq.topic (write). `QUEUE_NAME` itself is the queue of engines before
# partitions, which a new engine drains and deletes. Nothing else: no other queue, no other
# exchange, no management tag. Regexes, anchored; the queue name is escaped.
engine_permissions() {
  q=$(printf '%s' "$1" | sed 's/[].[^$*+?(){}|\\]/\\&/g')
  own="${q}(\\.dead-letter|\\.partitions|\\.p[0-9]{2}|\\.reply\\.[0-9a-f-]{36}|\\.webhooks\\.[0-9a-f]{10}(\\.failed)?)?"
  ENGINE_CONFIGURE="^${own}\$"
  ENGINE_WRITE="^(amq\\.topic|${own})\$"
  ENGINE_READ="^(amq\\.topic|${own})\$"
}
