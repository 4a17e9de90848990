"""Whole-image A/B through the ``rauc`` command line (where RAUC is installed on the box).

``rauc install <bundle>`` writes the inactive slot group and marks it active for the next
boot; ``rauc status --output-format=json`` says what runs; ``rauc status mark-good`` commits
the booted slot after a healthy trial; ``rauc status mark-bad`` (then a reboot) falls back.
The restart after activate/rollback is a reboot (the updater's restart seam). Here it can
only be tested against a stand-in ``rauc`` executable on PATH that records its calls.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from agent.ota.errors import INSTALL, OtaError

log = logging.getLogger(__name__)

_TIMEOUT_S = 1800.0  # writing a root filesystem image on an SD card can take minutes


class RaucBackend:
    name = "rauc"

    def __init__(self, binary: str = "rauc") -> None:
        self.binary = binary

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run(
                [self.binary, *args],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OtaError(INSTALL, f"rauc {args[0]} did not run: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-200:]
            raise OtaError(INSTALL, f"rauc {' '.join(args[:2])} exit {done.returncode}: {tail}")
        return done.stdout

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self._run("status", "--output-format=json"))
        except ValueError as exc:
            raise OtaError(INSTALL, f"rauc status is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise OtaError(INSTALL, "rauc status is not a JSON object")
        return data

    def running(self) -> str | None:
        """The bundle version of the booted slot."""
        data = self.status()
        for entry in data.get("slots", []):
            for slot in dict(entry).values():
                if isinstance(slot, dict) and slot.get("state") == "booted":
                    bundle = (slot.get("slot_status") or {}).get("bundle") or {}
                    version = bundle.get("version")
                    return str(version) if version is not None else None
        return None

    def install(self, bundle: Path, release: str, sha256: str) -> None:
        log.info("rauc install of %s (%s)", release, bundle.name)
        self._run("install", str(bundle))

    def activate(self, release: str) -> None:
        """``rauc install`` already marked the new slot active for the next boot."""

    def mark_good(self, release: str, previous: str | None) -> None:
        self._run("status", "mark-good")

    def rollback(self, previous: str) -> None:
        self._run("status", "mark-bad")

    def kept_bundle(self, release: str) -> Path | None:
        """No delta base: a RAUC bundle is a whole image."""
        return None
