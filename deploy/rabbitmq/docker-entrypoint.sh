#!/bin/sh
# Entry point for the official rabbitmq image in docker-compose.yml: render the broker's
# secrets from the environment, then hand over to the image's own entry point.
#   JWT_SECRET / JWT_KID          -> /etc/rabbitmq/advanced.config (HS256 key for user JWTs)
#   RABBITMQ_USER / RABBITMQ_PASSWORD -> the engine's own user, created on first boot, with
#                                        only the permissions it needs (engine-permissions.sh)
#   QUEUE_NAME                         -> the engine's queue (default chat21.engine)
#   ERLANG_COOKIE (cluster only)       -> /var/lib/rabbitmq/.erlang.cookie, the same on every
#                                        node of docker-compose.cluster.yml
# The engine user is not an administrator: for the management UI add one of your own
# (`rabbitmqctl add_user` / `set_user_tags … administrator`).
set -eu
: "${RABBITMQ_USER:?RABBITMQ_USER must be set}"
: "${RABBITMQ_PASSWORD:?RABBITMQ_PASSWORD must be set}"
/opt/chat21/render-advanced-config.sh /opt/chat21/advanced.config.template /etc/rabbitmq/advanced.config
. /opt/chat21/engine-permissions.sh
engine_permissions "${QUEUE_NAME:-chat21.engine}"
umask 077
cat > /etc/rabbitmq/conf.d/20-engine-user.conf <<CONF
default_user = ${RABBITMQ_USER}
default_pass = ${RABBITMQ_PASSWORD}
default_permissions.configure = ${ENGINE_CONFIGURE}
default_permissions.read = ${ENGINE_READ}
default_permissions.write = ${ENGINE_WRITE}
CONF
chown rabbitmq:rabbitmq /etc/rabbitmq/advanced.config /etc/rabbitmq/conf.d/20-engine-user.conf
if [ -n "${ERLANG_COOKIE:-}" ]; then
  printf '%s' "$ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie
  chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
  chmod 400 /var/lib/rabbitmq/.erlang.cookie
fi
exec docker-entrypoint.sh rabbitmq-server
