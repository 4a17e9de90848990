#!/bin/sh
# camfleet-agent postrm: the venv the postinst made goes with the package; purge also
# removes the box's state (outbox, releases, models) and its identity (key, certificate).
set -e
case "$1" in
  remove)
    rm -rf /opt/camfleet-agent/venv
    ;;
  purge)
    rm -rf /opt/camfleet-agent/venv /var/lib/camfleet-agent /etc/camfleet-agent
    ;;
esac
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
