"""The on-disk outbox between the pipeline and MQTT: SQLite in WAL mode, in the state dir.

Every event is encoded with the contract and committed to disk before anything is sent,
together with the next sequence number, so a power cut loses nothing that was accepted and
sequence numbers never repeat. A row is deleted only after the broker acknowledged it
(PUBACK of QoS 1); after a reconnect or a restart everything left is sent again, and the
server de-duplicates on the event id (``<device>-<epoch>-<seq>``; the epoch is drawn when
the outbox file is made, so ids stay unique even if the file is lost).

Budget (``max_bytes`` of payload, ``max_rows``), policy when it is exhausted:

1. the oldest snapshots are dropped first (they are the bulk and the least needed);
2. a new snapshot that still does not fit is dropped itself;
3. only when no snapshot is left, the oldest events are dropped to make room.

Every drop is counted (persistently, per class) and reported in the heartbeat
(``outbox_dropped``) and the agent's metrics.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import OutboxError, PayloadError
from firmware import contract

log = logging.getLogger(__name__)

EVENT = "event"
SNAPSHOT = "snapshot"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cls TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_messages_cls ON messages (cls, id);
"""


@dataclass(frozen=True)
class Row:
    id: int
    cls: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Dropped:
    snapshots: int
    events: int

    @property
    def total(self) -> int:
        return self.snapshots + self.events


class Outbox:
    def __init__(self, path: Path, device_id: str, max_bytes: int, max_rows: int) -> None:
        self.path = Path(path)
        self.device_id = contract.check_device_id(device_id)
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
            self._db.executescript(_SCHEMA)
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(4),)
                )
                for key in ("next_seq", "dropped_snapshots", "dropped_events"):
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, '0')", (key,))
            row = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages")
            self._rows, self._bytes = (int(v) for v in row.fetchone())
            self.epoch = self._meta("epoch")
            self.last_row_id = 0  # row of the last event added (benchmarks follow it)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    # ---------------------------------------------------------------- state
    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def _bump(self, key: str, by: int = 1) -> None:
        self._db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (by, key)
        )

    def depth(self) -> int:
        with self._lock:
            return self._rows

    def size(self) -> int:
        with self._lock:
            return self._bytes

    def dropped(self) -> Dropped:
        with self._lock:
            return Dropped(int(self._meta("dropped_snapshots")), int(self._meta("dropped_events")))

    def next_seq(self) -> int:
        with self._lock:
            return int(self._meta("next_seq"))

    # ---------------------------------------------------------------- writes
    def add(self, event_type: str, data: dict[str, Any], ts: float, cls: str = EVENT) -> str | None:
        """Encode an event and commit it; its event id, or None when a snapshot was dropped
        to keep the budget. PayloadError when it does not fit the contract (nothing kept)."""
        if cls not in (EVENT, SNAPSHOT):
            raise ValueError(f"unknown outbox class {cls!r}")
        with self._lock:
            try:
                return self._add(event_type, data, ts, cls)
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox write failed: {exc}") from exc

    def _add(self, event_type: str, data: dict[str, Any], ts: float, cls: str) -> str | None:
        seq = int(self._meta("next_seq"))
        event_id = f"{self.device_id}-{self.epoch}-{seq}"
        body = {"seq": seq, "event_id": event_id, "type": event_type, "data": data}
        try:
            topic, payload, _q, _r = contract.encode("event", self.device_id, body, ts)
        except contract.ProtocolError as exc:
            raise PayloadError(f"event {event_type} does not fit the contract: {exc}") from exc
        size = len(payload)
        with self._db:  # one transaction: room made, row added, seq advanced
            if not self._make_room(size, cls):
                self._bump("dropped_snapshots")
                log.warning("outbox full: snapshot %s dropped", event_id)
                return None
            cur = self._db.execute(
                "INSERT INTO messages (cls, topic, payload, size, created) VALUES (?,?,?,?,?)",
                (cls, topic, payload, size, time.time()),
            )
            self.last_row_id = int(cur.lastrowid or 0)
            self._bump("next_seq")
        self._rows += 1
        self._bytes += size
        return event_id

    def _over(self, size: int) -> bool:
        return self._bytes + size > self.max_bytes or self._rows + 1 > self.max_rows

    def _make_room(self, size: int, cls: str) -> bool:
        """Drop by the policy until ``size`` more fits; False when a snapshot must go."""
        if not self._over(size):
            return True
        if cls == SNAPSHOT:
            n, total = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE cls = ?",
                (SNAPSHOT,),
            ).fetchone()
            if (
                self._bytes - int(total) + size > self.max_bytes
                or self._rows - int(n) >= self.max_rows
            ):
                return False  # even without every older snapshot it would not fit
        while self._over(size):
            victim = self._db.execute(
                "SELECT id, size FROM messages WHERE cls = ? ORDER BY id LIMIT 1", (SNAPSHOT,)
            ).fetchone()
            key = "dropped_snapshots"
            if victim is None:
                if cls == SNAPSHOT:
                    return False
                victim = self._db.execute(
                    "SELECT id, size FROM messages ORDER BY id LIMIT 1"
                ).fetchone()
                key = "dropped_events"
                if victim is None:
                    return True  # empty and still too big: the contract limits the size
                log.error("outbox full: oldest event (row %s) dropped", victim[0])
            self._db.execute("DELETE FROM messages WHERE id = ?", (victim[0],))
            self._bump(key)
            self._rows -= 1
            self._bytes -= int(victim[1])
        return True

    def ack(self, ids: list[int]) -> int:
        """Delete acknowledged rows; how many were still there."""
        if not ids:
            return 0
        with self._lock:
            try:
                gone = 0
                with self._db:
                    for row_id in ids:
                        row = self._db.execute(
                            "SELECT size FROM messages WHERE id = ?", (row_id,)
                        ).fetchone()
                        if row is None:
                            continue  # acknowledged twice, or dropped meanwhile
                        self._db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
                        gone += 1
                        self._rows -= 1
                        self._bytes -= int(row[0])
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox delete failed: {exc}") from exc
            return gone

    # ---------------------------------------------------------------- reads
    def pending(self, after_id: int, limit: int) -> list[Row]:
        """Rows with an id above ``after_id``, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, cls, topic, payload FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [Row(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in cur.fetchall()]

    def events(self) -> list[dict[str, Any]]:
        """Every waiting event, decoded (for tests and the CLI)."""
        with self._lock:
            cur = self._db.execute("SELECT payload FROM messages ORDER BY id")
            return [json.loads(bytes(r[0])) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
