#!/bin/sh
# camfleet-server postrm: the venv goes with the package. Purge keeps the fleet's state
# (/var/lib/camfleet: CA, database, releases) and backups: losing them means
# re-provisioning every device, so they are removed only by hand.
set -e
case "$1" in
  remove|purge)
    rm -rf /opt/camfleet-server/venv
    ;;
esac
if [ "$1" = purge ]; then
  rm -rf /etc/camfleet
  echo "camfleet-server: /var/lib/camfleet and /var/backups/camfleet are kept; remove them by hand" >&2
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
