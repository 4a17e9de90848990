#!/bin/sh
# camfleet-server postinst: the service user, the venv from the wheels inside the package
# (pip --no-index: nothing is downloaded), the state and backup directories, the units.
# The CA, the broker config and the release repository are made by the administrator
# (`camfleet-server init`, `camfleet-server release init`, docs/deploy.md): they need the
# server's name and the offline root keys' holders.
set -e

APP=/opt/camfleet-server
VENV=$APP/venv

case "$1" in
  configure) ;;
  *) exit 0 ;;
esac

getent group camfleet >/dev/null || groupadd --system camfleet
getent passwd camfleet >/dev/null || useradd --system --gid camfleet --home-dir /var/lib/camfleet \
  --no-create-home --shell /usr/sbin/nologin camfleet

install -d -o camfleet -g camfleet -m 0750 /var/lib/camfleet /var/backups/camfleet
chown root:camfleet /etc/camfleet /etc/camfleet/server.toml
chmod 0750 /etc/camfleet
chmod 0640 /etc/camfleet/server.toml

# the wheels' own version of camfleet: the one wheel named camfleet-*.whl
wheel=$(ls "$APP"/wheels/camfleet-*-py3-none-any.whl)
version=${wheel##*/camfleet-}
version=${version%-py3-none-any.whl}
rm -rf "$VENV"
python3 -m venv "$VENV"
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$VENV/bin/python" -m pip install --quiet --no-index --no-cache-dir \
  --find-links "$APP/wheels" "camfleet[server,provision]==$version"

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  if [ -z "$2" ]; then
    # enabled; started by the administrator after `camfleet-server init` (docs/deploy.md)
    systemctl enable camfleet.target camfleet-broker.service camfleet-server.service \
      camfleet-est.service camfleet-ingest@1.service >/dev/null || true
  else
    # an upgrade: the prerm stopped what ran; the API unit migrates the schema first
    if systemctl is-enabled --quiet camfleet.target; then systemctl start camfleet.target || true; fi
    for unit in $(systemctl list-units --all --plain --no-legend 'camfleet-ingest@*.service' | awk '{print $1}'); do
      if systemctl is-enabled --quiet "$unit"; then systemctl start "$unit" || true; fi
    done
  fi
fi
exit 0
