#!/bin/sh
# Render advanced.config from JWT_SECRET (required) and JWT_KID (default tiledesk-key).
# usage: render-advanced-config.sh TEMPLATE OUTPUT
set -eu
template="${1:?template path}"
out="${2:?output path}"
: "${JWT_SECRET:?JWT_SECRET must be set to render the broker's HS256 key}"
kid="${JWT_KID:-tiledesk-key}"
case "$kid" in *[!A-Za-z0-9._-]*) echo "JWT_KID may only contain A-Z a-z 0-9 . _ -" >&2; exit 2;; esac
# base64url without padding: no character needs escaping inside an Erlang binary.
key=$(printf '%s' "$JWT_SECRET" | base64 | tr -d '\n=' | tr '+/' '-_')
umask 077
sed -e "s/@JWT_KID@/$kid/g" -e "s/@JWT_KEY_B64URL@/$key/g" "$template" > "$out"
chmod 600 "$out"
