"""The detector's model cards on the box: the card shipped with the agent, and card reads
whose errors are the agent's ``ModelError`` (the format itself is ``common.modelcard``)."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ModelError
from common import modelcard
from common.modelcard import ModelCard

CARDS_DIR = Path(__file__).resolve().parent / "cards"
DEFAULT_CARD = CARDS_DIR / "ssd_mobilenetv2_oidv4.toml"

__all__ = ["CARDS_DIR", "DEFAULT_CARD", "ModelCard", "load_card", "load_labels"]


def load_card(path: Path) -> ModelCard:
    """Read and check a card; ModelError with the reason when it does not fit."""
    try:
        return modelcard.load_card(path)
    except modelcard.CardError as exc:
        raise ModelError(str(exc)) from exc


def load_labels(path: Path) -> list[str]:
    """The label map: one label per line; ModelError when missing, unreadable or empty."""
    try:
        return modelcard.load_labels(path)
    except modelcard.CardError as exc:
        raise ModelError(str(exc)) from exc
