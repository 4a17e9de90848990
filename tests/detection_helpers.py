"""Fixtures for the detection tests: the real model (fetched by `make model`, fetched here
too when missing) and a detector on it. Import the fixtures into a test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from agent.vision.detector import Detector
from agent.vision.model_fetch import ModelFiles, ensure_model
from agent.vision.modelcard import DEFAULT_CARD, load_card


@pytest.fixture(scope="session")
def model_files() -> ModelFiles:
    return ensure_model()


@pytest.fixture(scope="session")
def detector(model_files: ModelFiles) -> Iterator[Detector]:
    yield Detector(load_card(DEFAULT_CARD), model_files.folder, "litert", 2)


def card_text(**changes: object) -> str:
    """The shipped card's TOML with top-level keys replaced (values already TOML)."""
    lines = DEFAULT_CARD.read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        if key in changes and not line.startswith(" "):
            out.append(f"{key} = {changes.pop(key)}")
        else:
            out.append(line)
    head = [f"{k} = {v}" for k, v in changes.items()]
    return "\n".join(head + out) + "\n"


def write_card(folder: Path, **changes: object) -> Path:
    path = folder / "card.toml"
    path.write_text(card_text(**changes))
    return path


def photo(name: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A scikit-image sample photo (``astronaut``, ``camera``, ...) as RGB uint8."""
    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray[Any, np.dtype[np.uint8]]) -> Path:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(bytes(buf))
    return path


def model_release_repo(
    tmp: Path, model: ModelFiles, eval_dir: Path, swapped: dict[str, bool]
) -> dict[str, str]:
    """A signed TUF repository in ``tmp/repo`` with a model bundle per release (bundles in
    ``tmp/m-<release>``): the real model, its label map as is, or, where ``swapped`` says
    so, with Person and Car swapped (it loads and runs, and finds cars where there are
    people). Returns release -> target path."""
    from common.model_bundle import build_model_bundle
    from fleet_server.ota.release import add_model_release
    from fleet_server.ota.tufrepo import TufRepo

    labels = model.labels.read_text().splitlines()
    i, j = labels.index("Person"), labels.index("Car")
    labels[i], labels[j] = labels[j], labels[i]
    wrong = tmp / "wrong-labels.txt"
    wrong.write_text("\n".join(labels) + "\n")
    repo = TufRepo.create(tmp / "repo", tmp / "keys")
    (tmp / "work").mkdir()
    targets: dict[str, str] = {}
    for release, swap in swapped.items():
        bundle = build_model_bundle(
            model.model, wrong if swap else model.labels, DEFAULT_CARD, eval_dir, release,
            tmp / f"m-{release}",
        )  # fmt: skip
        targets[release] = add_model_release(repo, bundle, release, tmp / "work")
    repo.publish()
    return targets
