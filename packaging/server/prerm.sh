#!/bin/sh
# camfleet-server prerm: stop every camfleet unit before the venv is rebuilt or removed.
# Ingest workers store and acknowledge what they hold before they end (TimeoutStopSec).
set -e
case "$1" in
  remove|upgrade|deconfigure)
    if [ -d /run/systemd/system ]; then
      systemctl stop camfleet-backup.timer 'camfleet-ingest@*.service' camfleet-est.service \
        camfleet-server.service camfleet-broker.service camfleet.target >/dev/null 2>&1 || true
    fi
    ;;
esac
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable camfleet.target camfleet-broker.service camfleet-server.service \
    camfleet-est.service camfleet-backup.timer >/dev/null 2>&1 || true
fi
exit 0
