"""Apply an agent bundle delta on the box: ``common.bundle.apply_delta`` (the fleet server
makes the patches with the same gzip form) with its refusals as OTA errors."""

from __future__ import annotations

from pathlib import Path

from agent.ota.errors import BAD_BUNDLE, OtaError
from common import bundle


def apply_delta(old: Path, patch: Path, out: Path) -> Path:
    """The full bundle rebuilt from the running bundle ``old`` and a delta, written
    atomically to ``out``; the caller checks it against the signed full target."""
    try:
        return bundle.apply_delta(old, patch, out)
    except bundle.BundleError as exc:
        raise OtaError(BAD_BUNDLE, str(exc)) from exc
