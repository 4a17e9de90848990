#!/bin/sh
# After the package's files are in place: a system user, a venv with the agent, the model.
set -e
getent group camfleet >/dev/null || groupadd --system camfleet
getent passwd camfleet >/dev/null || useradd --system --gid camfleet --home-dir /var/lib/camfleet-agent --shell /usr/sbin/nologin camfleet
# --system-site-packages: picamera2 and libcamera come from Raspberry Pi OS's apt
[ -x /opt/camfleet/venv/bin/python ] || python3 -m venv --system-site-packages /opt/camfleet/venv
/opt/camfleet/venv/bin/pip install -q /opt/camfleet/wheels/camfleet-*.whl'[agent]'
install -d -o camfleet -g camfleet -m 0750 /var/lib/camfleet-agent
CAMFLEET_MODEL_DIR=/var/lib/camfleet-agent/models /opt/camfleet/venv/bin/python -m agent.vision.model_fetch || \
  echo "camfleet-agent: model not fetched yet (needs npm and the registry); run: python -m agent.vision.model_fetch"
# the first agent release (a later package upgrade leaves OTA-installed releases alone)
if [ ! -e /var/lib/camfleet-agent/ota/current ]; then
  v=$(ls /opt/camfleet/factory/ | sed -n 's/^camfleet-agent-\(.*\)\.tar\.gz$/\1/p' | tail -n 1)
  /opt/camfleet/venv/bin/camfleet-agent-launch --config /etc/camfleet-agent/agent.toml \
    init --bundle "/opt/camfleet/factory/camfleet-agent-$v.tar.gz" --release "$v"
fi
chown -R camfleet:camfleet /var/lib/camfleet-agent
if command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
  systemctl enable camfleet-agent.service || true
fi
