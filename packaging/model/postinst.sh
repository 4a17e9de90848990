#!/bin/sh
# camfleet-model postinst: on a box whose model slot is empty, this model becomes the first
# one (the agent's postinst does the same when it is configured after this package). A box
# that has a model keeps it: models change through OTA releases and their accuracy gate.
# Elsewhere (the fleet server) nothing happens here.
set -e
[ "$1" = configure ] || exit 0
LAUNCH=/opt/camfleet-agent/venv/bin/camfleet-agent-launch
CONF=/etc/camfleet-agent/agent.toml
[ -x "$LAUNCH" ] && [ -f "$CONF" ] || exit 0
for bundle in /usr/share/camfleet/models/*.tar.gz; do
  [ -e "$bundle" ] || continue
  runuser -u camfleet -- "$LAUNCH" --config "$CONF" init-model --bundle "$bundle" --if-none
done
if [ -d /run/systemd/system ]; then systemctl try-restart camfleet-agent.service || true; fi
exit 0
