#!/bin/sh
# Entry point for the official rabbitmq image in docker-compose.yml: render the broker's
# secrets from the environment, then hand over to the image's own entry point.
#   JWT_SECRET / JWT_KID          -> /etc/rabbitmq/advanced.config (HS256 key for user JWTs)
#   RABBITMQ_USER / RABBITMQ_PASSWORD -> the engine's own user, created on first boot
set -eu
: "${RABBITMQ_USER:?RABBITMQ_USER must be set}"
: "${RABBITMQ_PASSWORD:?RABBITMQ_PASSWORD must be set}"
/opt/chat21/render-advanced-config.sh /opt/chat21/advanced.config.template /etc/rabbitmq/advanced.config
umask 077
cat > /etc/rabbitmq/conf.d/20-engine-user.conf <<CONF
default_user = ${RABBITMQ_USER}
default_pass = ${RABBITMQ_PASSWORD}
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
CONF
chown rabbitmq:rabbitmq /etc/rabbitmq/advanced.config /etc/rabbitmq/conf.d/20-engine-user.conf
exec docker-entrypoint.sh rabbitmq-server
