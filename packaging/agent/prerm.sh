#!/bin/sh
# camfleet-agent prerm: stop the agent before its venv is rebuilt (upgrade) or removed.
set -e
case "$1" in
  remove|upgrade|deconfigure)
    if [ -d /run/systemd/system ]; then
      systemctl stop camfleet-agent.service >/dev/null 2>&1 || true
    fi
    ;;
esac
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable camfleet-agent.service >/dev/null 2>&1 || true
fi
exit 0
