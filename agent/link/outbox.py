"""The on-disk outbox between the pipeline and MQTT: SQLite in WAL mode, in the state dir.

Every event is encoded with the contract and committed to disk before anything is sent,
together with the next sequence number, so a power cut loses nothing that was accepted and
sequence numbers never repeat. The broker's PUBACK only marks a row *sent*; the row is
deleted when the server's receipt names its ``seq`` (docs/protocol.md, receipts). What is
not receipted is sent again (``sender.py``), and the server de-duplicates on the event id
(``<device>-<epoch>-<seq>``; the epoch is drawn when the outbox file is made, so ids stay
unique even if the file is lost; it is the events' ``epoch`` too).

Counters (rows, bytes, sent-unreceipted, refused) change only after a commit succeeded; a
failed write or delete rolls back and counts again from the file. An event refused because
the file cannot be written (disk full) is counted in memory at once and in the file with
the next write that succeeds (``refused``, the heartbeat's ``outbox_refused``).

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
    created REAL NOT NULL,
    seq INTEGER,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_messages_cls ON messages (cls, id);
"""
# after the columns exist (an outbox made before receipts gets them in _upgrade)
_INDEXES = "CREATE INDEX IF NOT EXISTS ix_messages_seq ON messages (seq);"
_COUNT = "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(sent), 0) FROM messages"


@dataclass(frozen=True)
class Row:
    id: int
    cls: str
    topic: str
    payload: bytes


@dataclass
class _Room:
    """Counters inside a transaction; they become the outbox's after the commit."""

    rows: int
    size: int
    sent: int


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
            # keep the WAL small on a small disk: checkpoint every ~400 KiB, and cut the
            # file back after a checkpoint (by default it grows to 4 MiB and stays)
            self._db.execute("PRAGMA wal_autocheckpoint=100")
            self._db.execute("PRAGMA journal_size_limit=1048576")
            self._db.executescript(_SCHEMA)
            with self._db:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(4),)
                )
                for key in ("next_seq", "dropped_snapshots", "dropped_events", "refused"):
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, '0')", (key,))
                self._upgrade()
                self._db.execute(_INDEXES)
            self._rows = self._bytes = self._sent = 0
            self._recount()
            self._refused_unsaved = 0
            self.epoch = self._meta("epoch")
            self.last_row_id = 0  # row of the last event added (benchmarks follow it)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    def _upgrade(self) -> None:
        """An outbox made before receipts: its rows stay as they are (deleted on PUBACK,
        ``seq`` NULL) and a new stream starts at 0 with a new epoch."""
        cols = {str(r[1]) for r in self._db.execute("PRAGMA table_info(messages)")}
        if "seq" not in cols:
            self._db.execute("ALTER TABLE messages ADD COLUMN seq INTEGER")
            self._db.execute("ALTER TABLE messages ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
        if self._db.execute("SELECT 1 FROM meta WHERE key = 'receipts'").fetchone() is None:
            if self._meta("next_seq") != "0":
                self._db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'epoch'", (secrets.token_hex(4),)
                )
                self._db.execute("UPDATE meta SET value = '0' WHERE key = 'next_seq'")
            self._db.execute("INSERT INTO meta VALUES ('receipts', '1')")

    def _recount(self) -> None:
        """Counters from the file (after opening, and after a failed transaction)."""
        rows, size, sent = self._db.execute(_COUNT).fetchone()
        self._rows, self._bytes, self._sent = int(rows), int(size), int(sent)

    def _failed(self, what: str, exc: sqlite3.Error) -> OutboxError:
        """Roll back what a failed transaction left, count again; the error to raise."""
        try:
            if self._db.in_transaction:
                self._db.rollback()
            self._recount()
            # a full disk: give back what the WAL holds, so that the next write may fit
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as again:
            log.error("outbox counters not refreshed after a failed %s: %s", what, again)
        return OutboxError(f"outbox {what} failed: {exc}")

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

    def unreceipted(self) -> int:
        """Rows the broker acknowledged that no receipt named yet."""
        with self._lock:
            return self._sent

    def refused(self) -> int:
        """Events refused because the outbox could not store them, since it was made."""
        with self._lock:
            try:
                return int(self._meta("refused")) + self._refused_unsaved
            except sqlite3.Error:
                return self._refused_unsaved

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
                self._refused_unsaved += 1
                err = self._failed("write", exc)
                self._save_refused()
                raise err from exc

    def _save_refused(self) -> None:
        """Persist the refused count if the disk takes it (a restart while full keeps it)."""
        if not self._refused_unsaved:
            return
        try:
            with self._db:
                self._bump("refused", self._refused_unsaved)
            self._refused_unsaved = 0
        except sqlite3.Error as exc:
            log.warning("outbox refused count kept in memory: %s", exc)  # saved with the next

    def _add(self, event_type: str, data: dict[str, Any], ts: float, cls: str) -> str | None:
        seq = int(self._meta("next_seq"))
        event_id = f"{self.device_id}-{self.epoch}-{seq}"
        body = {"seq": seq, "event_id": event_id, "type": event_type, "data": data,
                "epoch": self.epoch}  # fmt: skip
        try:
            topic, payload, _q, _r = contract.encode("event", self.device_id, body, ts)
        except contract.ProtocolError as exc:
            raise PayloadError(f"event {event_type} does not fit the contract: {exc}") from exc
        size = len(payload)
        room = _Room(self._rows, self._bytes, self._sent)
        with self._db:  # one transaction: room made, row added, seq advanced
            if self._refused_unsaved:
                self._bump("refused", self._refused_unsaved)
            if not self._make_room(size, cls, room):
                self._bump("dropped_snapshots")
                log.warning("outbox full: snapshot %s dropped", event_id)
                dropped = None
            else:
                cur = self._db.execute(
                    "INSERT INTO messages (cls, topic, payload, size, created, seq) "
                    "VALUES (?,?,?,?,?,?)",
                    (cls, topic, payload, size, time.time(), seq),
                )
                self.last_row_id = int(cur.lastrowid or 0)
                self._bump("next_seq")
                room.rows += 1
                room.size += size
                dropped = event_id
        # committed: only now the counters move
        self._refused_unsaved = 0
        self._rows, self._bytes, self._sent = room.rows, room.size, room.sent
        return dropped

    def _over(self, size: int, room: _Room) -> bool:
        return room.size + size > self.max_bytes or room.rows + 1 > self.max_rows

    def _make_room(self, size: int, cls: str, room: _Room) -> bool:
        """Drop by the policy until ``size`` more fits; False when a snapshot must go."""
        if not self._over(size, room):
            return True
        if cls == SNAPSHOT:
            n, total = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE cls = ?",
                (SNAPSHOT,),
            ).fetchone()
            if (
                room.size - int(total) + size > self.max_bytes
                or room.rows - int(n) >= self.max_rows
            ):
                return False  # even without every older snapshot it would not fit
        while self._over(size, room):
            victim = self._db.execute(
                "SELECT id, size, sent FROM messages WHERE cls = ? ORDER BY id LIMIT 1",
                (SNAPSHOT,),
            ).fetchone()
            key = "dropped_snapshots"
            if victim is None:
                if cls == SNAPSHOT:
                    return False
                victim = self._db.execute(
                    "SELECT id, size, sent FROM messages ORDER BY id LIMIT 1"
                ).fetchone()
                key = "dropped_events"
                if victim is None:
                    return True  # empty and still too big: the contract limits the size
                log.error("outbox full: oldest event (row %s) dropped", victim[0])
            self._db.execute("DELETE FROM messages WHERE id = ?", (victim[0],))
            self._bump(key)
            room.rows -= 1
            room.size -= int(victim[1])
            room.sent -= int(victim[2])
        return True

    def ack(self, ids: list[int]) -> int:
        """Delete rows by id (the broker refused them, or rows made before receipts that a
        PUBACK settles); how many were still there."""
        if not ids:
            return 0
        with self._lock:
            try:
                room = _Room(self._rows, self._bytes, self._sent)
                gone = 0
                with self._db:
                    for row_id in ids:
                        row = self._db.execute(
                            "SELECT size, sent FROM messages WHERE id = ?", (row_id,)
                        ).fetchone()
                        if row is None:
                            continue  # acknowledged twice, or dropped meanwhile
                        self._db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
                        gone += 1
                        room.rows -= 1
                        room.size -= int(row[0])
                        room.sent -= int(row[1])
            except sqlite3.Error as exc:
                raise self._failed("delete", exc) from exc
            self._rows, self._bytes, self._sent = room.rows, room.size, room.sent
            return gone

    def mark_sent(self, ids: list[int]) -> list[int]:
        """The broker acknowledged these rows: mark them sent (they wait for a receipt).
        Rows made before receipts (no ``seq``) are deleted as before. Returns the ids of
        the rows that now wait for a receipt."""
        if not ids:
            return []
        with self._lock:
            try:
                legacy: list[int] = []
                waiting: list[int] = []
                fresh = 0
                with self._db:
                    for row_id in ids:
                        row = self._db.execute(
                            "SELECT seq, sent FROM messages WHERE id = ?", (row_id,)
                        ).fetchone()
                        if row is None:
                            continue  # gone meanwhile (receipted, dropped)
                        if row[0] is None:
                            legacy.append(row_id)
                            continue
                        waiting.append(row_id)
                        if not row[1]:
                            self._db.execute("UPDATE messages SET sent = 1 WHERE id = ?", (row_id,))
                            fresh += 1
            except sqlite3.Error as exc:
                raise self._failed("update", exc) from exc
            self._sent += fresh
        if legacy:
            self.ack(legacy)
        return waiting

    def receipt(self, ranges: list[list[int]]) -> list[int]:
        """Delete the sent rows whose ``seq`` the server's receipt names (ranges already
        checked with ``contract.receipt_ranges``); the ids of the rows deleted. A row not
        yet sent is never deleted by a receipt."""
        if not ranges:
            return []
        with self._lock:
            try:
                room = _Room(self._rows, self._bytes, self._sent)
                gone: list[int] = []
                with self._db:
                    for lo, hi in ranges:
                        rows = self._db.execute(
                            "SELECT id, size FROM messages WHERE seq BETWEEN ? AND ? AND sent = 1",
                            (lo, hi),
                        ).fetchall()
                        if not rows:
                            continue
                        self._db.execute(
                            "DELETE FROM messages WHERE seq BETWEEN ? AND ? AND sent = 1",
                            (lo, hi),
                        )
                        gone += [int(r[0]) for r in rows]
                        room.rows -= len(rows)
                        room.size -= sum(int(r[1]) for r in rows)
                        room.sent -= len(rows)
            except sqlite3.Error as exc:
                raise self._failed("delete", exc) from exc
            self._rows, self._bytes, self._sent = room.rows, room.size, room.sent
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
            self._save_refused()
            self._db.close()
