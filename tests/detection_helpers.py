"""Fixtures for the detection tests: the real model (fetched by `make model`, fetched here
too when missing) and a detector on it. Import the fixtures into a test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.detector import Detector
from agent.model_fetch import ModelFiles, ensure_model
from agent.modelcard import DEFAULT_CARD, load_card


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
