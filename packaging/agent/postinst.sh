#!/bin/sh
# camfleet-agent postinst: the service user, the venv from the wheels inside the package
# (pip --no-index: nothing is downloaded), the first agent release, the first model.
set -e

APP=/opt/camfleet-agent
VENV=$APP/venv
CONF=/etc/camfleet-agent/agent.toml
STATE=/var/lib/camfleet-agent

case "$1" in
  configure) ;;
  abort-upgrade|abort-remove|abort-deconfigure) exit 0 ;;
  *) exit 0 ;;
esac

getent group camfleet >/dev/null || groupadd --system camfleet
getent passwd camfleet >/dev/null || useradd --system --gid camfleet --home-dir "$STATE" \
  --no-create-home --shell /usr/sbin/nologin camfleet
# cameras (/dev/video*, the Pi's media devices) belong to group video
if getent group video >/dev/null; then usermod -a -G video camfleet; fi

# the package's own agent release (one file): its name gives the version
factory=$(ls "$APP"/factory/camfleet-agent-*.tar.gz)
VERSION=${factory##*/camfleet-agent-}
VERSION=${VERSION%.tar.gz}

install -d -o camfleet -g camfleet -m 0750 "$STATE"
# the agent renews its certificate in place; provisioning (run as camfleet) writes here
chown root:camfleet /etc/camfleet-agent "$CONF"
chmod 0770 /etc/camfleet-agent
chmod 0640 "$CONF"

# A new venv for every package version, from the wheels of this one only.
# --system-site-packages: picamera2 and libcamera come from Raspberry Pi OS's own packages.
rm -rf "$VENV"
python3 -m venv --system-site-packages "$VENV"
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  "$VENV/bin/python" -m pip install --quiet --no-index --no-cache-dir \
  --find-links "$APP/wheels" "camfleet[agent]==$VERSION"

launch() { runuser -u camfleet -- "$VENV/bin/camfleet-agent-launch" --config "$CONF" "$@"; }

# The package's agent release: the first one on a new box; on an upgrade it goes beside the
# running one and becomes current only when it is newer (OTA releases stay as they are).
running=$(basename "$(readlink "$STATE/ota/current" 2>/dev/null || true)")
if [ -z "$running" ] || dpkg --compare-versions "$running" lt "$VERSION"; then
  launch init --bundle "$factory" --release "$VERSION"
fi

# The first detector model, when a camfleet-model-* package holds one and the box has none
# (its own postinst does the same when it is configured after this package).
for bundle in /usr/share/camfleet/models/*.tar.gz; do
  [ -e "$bundle" ] || continue
  launch init-model --bundle "$bundle" --if-none
done

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  if [ -z "$2" ]; then
    # a new box: enabled, started once provisioned (ConditionPathExists cert.pem)
    systemctl enable camfleet-agent.service >/dev/null || true
  elif systemctl is-enabled --quiet camfleet-agent.service; then
    systemctl start camfleet-agent.service || true  # the prerm stopped it for the upgrade
  fi
fi
exit 0
