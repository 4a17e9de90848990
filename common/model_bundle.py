"""Model bundles: what a model update carries, as one directory (tarred as the OTA target).

Layout::

    model.tflite        the model
    labels.txt          its label map, one label per line
    card.toml           its model card (common/modelcard.py), naming the two files above
    eval/expected.json  {"<image file>": [{"label": "Person", "box": [x0, y0, x1, y1]}, ...]}
    eval/<images>       the evaluation set (boxes in fractions of the image)
    bundle.json         manifest: format, name, release, sha256 of every other file

``build_model_bundle`` makes one (into a temporary directory renamed into place, every file
fsynced), ``read_model_bundle`` checks it: every file listed with the right sha256, nothing
unlisted, the card valid and naming the bundle's files, the expected results well formed.
Any mismatch is a ``BundleError`` (``BundleHashError`` for a wrong hash) saying which file.

The format lives in ``common`` because both sides read it: the fleet server checks a bundle
before it publishes a model release, the agent before it installs one. Drafting an
evaluation set with a detector is the agent's (``agent/ota/eval_set.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.files import atomic_write, sha256_of, sync_dir
from common.modelcard import CardError, ModelCard, load_card, load_labels

MANIFEST = "bundle.json"
MODEL = "model.tflite"
LABELS = "labels.txt"
CARD = "card.toml"
EVAL = "eval"
EXPECTED = "eval/expected.json"
FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
_MANIFEST_MAX = 256 * 1024  # bytes; a manifest lists a few dozen files
_EXPECTED_MAX = 1024 * 1024
_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BAD_RELEASE = "release {!r}: 1-64 characters of A-Z a-z 0-9 . _ + -"


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Labelled:
    """A box with its label; ``score`` is 1.0 for a reference (expected) box."""

    label: str
    box: Box
    score: float = 1.0


class BundleError(ValueError):
    """A model bundle is malformed, incomplete or inconsistent."""


class BundleHashError(BundleError):
    """A file of a model bundle does not have the sha256 its manifest lists."""


class ExpectedBox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=128, description="Label of the object.")
    box: tuple[float, float, float, float] = Field(
        description="x0, y0, x1, y1 as fractions of the image."
    )

    @field_validator("box")
    @classmethod
    def _inside(cls, box: tuple[float, float, float, float]) -> object:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in box):
            raise ValueError("box coordinates must be fractions 0..1")
        if x1 <= x0 or y1 <= y0:
            raise ValueError("box needs x0 < x1 and y0 < y1")
        return box


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = Field(description="Bundle format version (1).")
    name: str = Field(min_length=1, max_length=128, description="Model name (the card's).")
    release: str = Field(description="Release of this bundle.")
    files: dict[str, str] = Field(description="Relative POSIX path -> sha256 (hex).")

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        if not _RELEASE.match(value):
            raise ValueError(_BAD_RELEASE.format(value))
        return value

    @field_validator("files")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for rel, digest in value.items():
            if not _SHA256.match(digest):
                raise ValueError(f"{rel!r}: sha256 must be 64 lower-case hex digits")
        return value


@dataclass(frozen=True)
class EvalImage:
    path: Path
    expected: tuple[Labelled, ...]


@dataclass(frozen=True)
class ModelBundle:
    """A checked bundle: its directory, manifest fields, card and evaluation set."""

    path: Path
    name: str
    release: str
    card: ModelCard
    labels: tuple[str, ...]
    eval_set: tuple[EvalImage, ...]
    files: dict[str, str]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL


def _safe_rel(rel: str) -> bool:
    p = PurePosixPath(rel)
    return (
        bool(rel)
        and "\\" not in rel
        and not p.is_absolute()
        and ".." not in p.parts
        and str(p) == rel
    )


def parse_expected(data: bytes, where: str) -> dict[str, list[ExpectedBox]]:
    if len(data) > _EXPECTED_MAX:
        raise BundleError(f"{where} is larger than {_EXPECTED_MAX} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise BundleError(f"{where} must be an object naming at least one image")
    out: dict[str, list[ExpectedBox]] = {}
    for image, boxes in raw.items():
        if not isinstance(boxes, list):
            raise BundleError(f"{where}: {image!r} must map to a list of boxes")
        if "/" in image or not image.lower().endswith(IMAGE_SUFFIXES) or not _safe_rel(image):
            raise BundleError(f"{where}: {image!r} is not an image file name")
        try:
            out[image] = [ExpectedBox.model_validate(b) for b in boxes]
        except ValidationError as exc:
            raise BundleError(f"{where}: image {image!r}: {exc.errors()[0]['msg']}") from exc
    return out


def _labelled(boxes: list[ExpectedBox]) -> tuple[Labelled, ...]:
    return tuple(Labelled(b.label, b.box) for b in boxes)


def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    try:
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"model bundle {root} has no {MANIFEST}")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if len(data) > _MANIFEST_MAX:
        raise BundleError(f"{path} is larger than {_MANIFEST_MAX} bytes")
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(manifest)"
        raise BundleError(f"{path}: {loc}: {first['msg']}") from exc
    if manifest.format != FORMAT:
        raise BundleError(f"{path}: format {manifest.format}, this agent reads {FORMAT}")
    return manifest


def _check_files(root: Path, manifest: Manifest) -> None:
    for rel in (MODEL, LABELS, CARD, EXPECTED):
        if rel not in manifest.files:
            raise BundleError(f"model bundle {root}: {rel} is missing from {MANIFEST}")
    on_disk = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise BundleError(f"model bundle {root}: {p.relative_to(root)} is a symlink")
        for name in filenames:
            on_disk.add((Path(dirpath) / name).relative_to(root).as_posix())
    on_disk.discard(MANIFEST)
    unlisted = sorted(on_disk - set(manifest.files))
    if unlisted:
        raise BundleError(f"model bundle {root}: files not in {MANIFEST}: {unlisted}")
    for rel, want in sorted(manifest.files.items()):
        if not _safe_rel(rel) or rel == MANIFEST:
            raise BundleError(f"model bundle {root}: {MANIFEST} lists a bad path {rel!r}")
        if rel not in on_disk:
            raise BundleError(f"model bundle {root}: {rel} is missing")
        got = sha256_of(root / rel)
        if got != want:
            raise BundleHashError(f"model bundle {root}: {rel} has sha256 {got}, {want} listed")


def read_model_bundle(path: Path) -> ModelBundle:
    """The checked bundle in ``path``; BundleError (BundleHashError) saying what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} is not a directory")
    manifest = _read_manifest(root)
    _check_files(root, manifest)
    try:
        card = load_card(root / CARD)
        labels = tuple(load_labels(root / LABELS))
    except CardError as exc:
        raise BundleError(f"model bundle {root}: {exc}") from exc
    if card.model_file != MODEL or card.labels_file != LABELS:
        raise BundleError(
            f"model bundle {root}: the card must name {MODEL} and {LABELS}, "
            f"it names {card.model_file} and {card.labels_file}"
        )
    if card.name != manifest.name:
        raise BundleError(f"model bundle {root}: card is {card.name}, manifest {manifest.name}")
    expected = parse_expected((root / EXPECTED).read_bytes(), f"{root}/{EXPECTED}")
    images = []
    for image, boxes in sorted(expected.items()):
        if f"{EVAL}/{image}" not in manifest.files:
            raise BundleError(f"model bundle {root}: evaluation image {image} is not listed")
        images.append(EvalImage(root / EVAL / image, _labelled(boxes)))
    return ModelBundle(
        root, manifest.name, manifest.release, card, labels, tuple(images), dict(manifest.files)
    )


# ---------------------------------------------------------------- building


def card_toml(card: ModelCard) -> str:
    """The card as TOML that ``load_card`` reads back to an equal card."""
    return tomli_w.dumps(card.model_dump(mode="json", exclude_none=True))


def build_model_bundle(
    model_file: Path,
    labels_file: Path,
    card_file: Path,
    eval_dir: Path,
    release: str,
    out_dir: Path,
) -> Path:
    """Make a bundle in ``out_dir`` (which must not exist) and return it, checked.

    ``eval_dir`` holds ``expected.json`` and the images it names. The card is rewritten to
    name ``model.tflite`` and ``labels.txt``. The bundle is written to a temporary directory
    beside ``out_dir`` and renamed into place: it appears whole or not at all."""
    out_dir = Path(out_dir)
    if not _RELEASE.match(release):
        raise BundleError(_BAD_RELEASE.format(release))
    if out_dir.exists():
        raise BundleError(f"{out_dir} exists already; a bundle is never overwritten")
    try:
        card = load_card(card_file)
        load_labels(labels_file)  # readable and not empty
    except CardError as exc:
        raise BundleError(str(exc)) from exc
    card = card.model_copy(update={"model_file": MODEL, "labels_file": LABELS})
    try:
        expected_data = (Path(eval_dir) / "expected.json").read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {eval_dir}/expected.json: {exc}") from exc
    expected = parse_expected(expected_data, f"{eval_dir}/expected.json")
    contents: dict[str, Path | bytes] = {
        MODEL: Path(model_file),
        LABELS: Path(labels_file),
        CARD: card_toml(card).encode(),
        EXPECTED: json.dumps(
            {k: [b.model_dump(mode="json") for b in v] for k, v in sorted(expected.items())},
            indent=1,
        ).encode(),
    }
    for image in expected:
        contents[f"{EVAL}/{image}"] = Path(eval_dir) / image
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / EVAL).mkdir(parents=True)
    try:
        files = {}
        for rel, src in contents.items():
            try:
                data = src if isinstance(src, bytes) else src.read_bytes()
            except OSError as exc:
                raise BundleError(f"cannot read {src!s}: {exc}") from exc
            atomic_write(str(tmp / rel), data, 0o644)
            files[rel] = hashlib.sha256(data).hexdigest()
        manifest = {"format": FORMAT, "name": card.name, "release": release, "files": files}
        atomic_write(str(tmp / MANIFEST), json.dumps(manifest, indent=1).encode(), 0o644)
        sync_dir(str(tmp / EVAL))
        os.rename(tmp, out_dir)
        sync_dir(str(out_dir.parent))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_model_bundle(out_dir).path
