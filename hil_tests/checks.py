"""What scenarios read to check their invariants: the server's records (through its REST
API) and the device's state (its files, through the rig), never logs.

``FleetApi`` (hil_tests.rig) is what a rig's ``api`` offers: the virtual rig's
``IdentityServer``, the real rig's ``HttpApi``.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hil_tests.rig import FleetApi, Rig


def device(api: FleetApi, device_id: str) -> dict[str, Any] | None:
    status, body = api.get(f"/api/devices/{device_id}")
    return body if status == 200 and isinstance(body, dict) else None


def state(api: FleetApi, device_id: str) -> str | None:
    dev = device(api, device_id)
    return None if dev is None else str(dev.get("state"))


def online(api: FleetApi, device_id: str) -> bool:
    return state(api, device_id) == "online"


def heartbeat(api: FleetApi, device_id: str) -> dict[str, Any]:
    dev = device(api, device_id) or {}
    beat = dev.get("last_heartbeat")
    return beat if isinstance(beat, dict) else {}


def count_devices(api: FleetApi, state_filter: str) -> int:
    status, page = api.get(f"/api/devices?state={state_filter}&limit=1")
    if status != 200:
        raise AssertionError(f"device list answered {status}: {page}")
    return int(page["total"])


class Reader(Protocol):
    """What reads the REST API: a rig's ``FleetApi``, or a test's ``ServerProcess``."""

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]: ...


def every_item(api: Reader, path: str) -> list[dict[str, Any]]:
    """Every item of a paged list endpoint (``path`` with its filters, if any), all pages."""
    out: list[dict[str, Any]] = []
    sep = "&" if "?" in path else "?"
    for _ in range(1000):
        status, page = api.get(f"{path}{sep}limit=1000&offset={len(out)}")
        if status != 200:
            raise AssertionError(f"{path} answered {status}: {page}")
        out += page["items"]
        if len(out) >= page["total"] or not page["items"]:
            return out
    raise AssertionError(f"{path}: more than a million items")


def events(api: FleetApi, device_id: str, event_type: str | None = None) -> list[dict[str, Any]]:
    """Every event the server stored for ``device_id`` (all pages)."""
    kind = f"&type={event_type}" if event_type else ""
    return every_item(api, f"/api/events?device_id={device_id}{kind}")


def alerts(api: FleetApi, device_id: str, rule: str | None = None) -> list[dict[str, Any]]:
    status, page = api.get(f"/api/alerts?device_id={device_id}&limit=1000")
    if status != 200:
        raise AssertionError(f"alerts answered {status}: {page}")
    items: list[dict[str, Any]] = page["items"]
    return [a for a in items if rule is None or a["rule"] == rule]


@dataclass(frozen=True)
class OutboxState:
    rows: int  # messages waiting
    size: int  # their payload bytes
    next_seq: int  # events ever committed (seq of the next one)
    dropped_snapshots: int
    dropped_events: int
    integrity: str  # SQLite's integrity_check: "ok" when the file is whole

    @property
    def dropped(self) -> int:
        return self.dropped_snapshots + self.dropped_events


def outbox(rig: Rig, box: str, name: str = "outbox.sqlite") -> OutboxState | None:
    """The box's outbox read from a copy of its files (the database and its WAL), so the
    reading never takes a lock the agent would wait on."""
    main = rig.read_file(box, name)
    if main is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hil-outbox-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(main)
        wal = rig.read_file(box, name + "-wal")
        if wal is not None:
            (Path(tmp) / (name + "-wal")).write_bytes(wal)
        db = sqlite3.connect(path)
        try:
            rows, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
    return OutboxState(
        int(rows), int(size), int(meta.get("next_seq", 0)),
        int(meta.get("dropped_snapshots", 0)), int(meta.get("dropped_events", 0)), str(check),
    )  # fmt: skip


def exactly_once(stored: list[dict[str, Any]]) -> tuple[list[int], int]:
    """(sorted seqs, duplicates): duplicates counts event ids the server holds twice."""
    ids = [e["event_id"] for e in stored]
    return sorted(int(e["seq"]) for e in stored), len(ids) - len(set(ids))
