"""``state.json``: the update record on disk, written atomically (temp, fsync, rename)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.ota.machine import Record
from common.files import atomic_write

log = logging.getLogger(__name__)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> Record:
        """The saved record; a fresh one when none is saved. A record that cannot be read is
        kept aside as ``state.json.bad`` and a fresh one starts (the slots still tell what
        runs)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Record()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return Record.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("update state %s unreadable (%s); starting fresh", self.path, exc)
            self.path.replace(self.path.with_name(self.path.name + ".bad"))
            return Record()

    def save(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), sort_keys=True, indent=1).encode()
        atomic_write(str(self.path), data, 0o640)
