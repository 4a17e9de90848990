#!/bin/sh
# /usr/bin/camfleet-server: the fleet server's command with the packaged config
# (/etc/camfleet/server.toml, or $CAMFLEET_SERVER_CONFIG; a --config given wins), run as the
# service user so that every file it writes (CA, keys, releases, backups) stays the
# services' own. See docs/deploy.md.
set -e
BIN=/opt/camfleet-server/venv/bin/camfleet-server
CONFIG=${CAMFLEET_SERVER_CONFIG:-/etc/camfleet/server.toml}
if [ "$(id -u)" = 0 ]; then
  exec runuser -u camfleet -- "$BIN" --config "$CONFIG" "$@"
fi
exec "$BIN" --config "$CONFIG" "$@"
