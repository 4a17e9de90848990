#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for the tests (CI).
# Uses a running one when there is one; otherwise installs Debian's and starts it.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
if command -v pg_isready >/dev/null 2>&1 && ready; then
  exit 0
fi
CAMFLEET_WITH_POSTGRES=1 "$(dirname "$0")/setup-system.sh"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
version=$(ls /etc/postgresql | sort -n | tail -n 1)
$SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 30); do
  ready && break
  sleep 1
done
ready || { echo "PostgreSQL did not start" >&2; exit 1; }
# tests connect as postgres over TCP without a password (trust for local loopback only)
hba=$(ls /etc/postgresql/"$version"/main/pg_hba.conf)
if ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
  $SUDO sed -i 's/^host\s\+all\s\+all\s\+127.0.0.1\/32\s\+.*/host all all 127.0.0.1\/32 trust/' "$hba"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
