"""The device registry: applies accepted messages in batches and answers queries."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from firmware import contract
from fleet_server.commands import store as commands
from fleet_server.db import Base, Device, Heartbeat, page
from fleet_server.health import engine as health
from fleet_server.health.alerts import AlertBook, AlertChange
from fleet_server.ingest import events
from fleet_server.inventory import store as inventory
from fleet_server.privacy import gate as privacy_gate
from fleet_server.receipts import store as receipts
from fleet_server.rollouts import store as rollout_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A message that passed the contract, waiting to be stored."""

    device_id: str
    kind: str
    body: dict[str, Any]
    received_at: float
    raw: bytes | None = None  # the payload as received (JSON of ``body``), when at hand


@dataclass
class ApplyStats:
    heartbeats: int = 0
    statuses: int = 0
    duplicates: int = 0
    ignored: int = 0
    went_online: list[str] = field(default_factory=list)
    went_offline: list[str] = field(default_factory=list)
    # heartbeats to run the health rules on: (device id, body, received at)
    observed: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    alerts: list[AlertChange] = field(default_factory=list)
    command_results: int = 0
    events: int = 0
    images_refused: int = 0


def _insert(db: Session, table: type[Base]) -> Any:
    """INSERT with ON CONFLICT support for the dialect in use (SQLite or PostgreSQL)."""
    if db.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


_PG_HEARTBEATS = text(
    "INSERT INTO heartbeats (device_id, seq, ts, received_at, body) "
    "SELECT e->2->>'id', CAST(e->2->>'seq' AS bigint), CAST(e->>1 AS float8), "
    "CAST(e->>0 AS float8), e->2 FROM json_array_elements(CAST(:rows AS json)) AS e "
    "ON CONFLICT (device_id, seq, ts) DO NOTHING"
)


def _insert_heartbeats(db: Session, msgs: Sequence[Accepted]) -> None:
    """Store heartbeats; the unique (device, seq, ts) index drops a redelivery another
    worker stored already.

    On PostgreSQL: one statement with one parameter, a JSON array of [received_at, ts,
    payload] triples, the payloads as received (not encoded again); PostgreSQL takes the
    columns out of it. The contract already checked that ``id`` is the device's, ``seq``
    an int and ``ts`` a number. ``ts`` is the number as Python read it, not its text: a
    text such as ``1e-400`` is 0.0 to the contract but out of range for PostgreSQL's float8
    (the heartbeat became a dead letter). Elsewhere: an executemany.
    """
    if db.get_bind().dialect.name == "postgresql":
        pairs = ",".join(
            f"[{m.received_at!r},{float(m.body['ts'])!r},"
            f"{m.raw.decode() if m.raw is not None else json.dumps(m.body)}]"
            for m in msgs
        )
        db.execute(_PG_HEARTBEATS, {"rows": "[" + pairs + "]"})
        return
    rows = [
        {"device_id": m.device_id, "seq": int(m.body["seq"]), "ts": float(m.body["ts"]),
         "received_at": m.received_at, "body": m.body}
        for m in msgs
    ]  # fmt: skip
    db.execute(_insert(db, Heartbeat).on_conflict_do_nothing(), rows)


def _device_kind(body: dict[str, Any]) -> str:
    """A new device's kind from its first message: only status and heartbeat check their
    ``kind``; any other kind's is an unknown field, any string (issue 15: one longer than
    the column made every message of a new device a dead letter)."""
    kind = body.get("kind")
    return str(kind) if kind in contract.DEVICE_KINDS else "agent"


class Registry:
    def __init__(self, sessions: sessionmaker[Session], alerts: AlertBook | None = None) -> None:
        self.sessions = sessions
        self.alerts = alerts

    # ---------------------------------------------------------------- writes
    def apply(self, batch: Sequence[Accepted]) -> ApplyStats:
        """Store a batch in one transaction."""
        stats = ApplyStats()
        with self.sessions.begin() as db:
            self._ensure_devices(db, batch)
            # stored before any device row is locked, so that two workers store their
            # heartbeats at the same time; the unique index drops a repeat
            beats = [msg for msg in batch if msg.kind == "heartbeat"]
            if beats:
                _insert_heartbeats(db, beats)
            devices = self._lock_devices(db, batch)
            event_rows: list[dict[str, Any]] = []
            latest: dict[str, Accepted] = {}  # newest heartbeat per device, not yet applied
            for msg in batch:
                dev = devices[msg.device_id]
                if msg.kind != "heartbeat" and msg.device_id in latest:
                    self._apply_latest(dev, latest.pop(msg.device_id))  # in order, as sent
                if msg.kind == "heartbeat":
                    self._heartbeat(dev, msg, stats, latest)
                elif msg.kind == "status":
                    self._status(dev, msg, stats)
                elif msg.kind == "cmd_res":  # issue 20: an image the site forbids is not kept
                    privacy_gate.screen_result(db, dev.id, msg.body, msg.received_at)
                    done = commands.apply_response(db, dev.id, msg.body, msg.received_at)
                    stats.command_results += done is not None
                elif msg.kind == "config_reported":
                    commands.apply_report(db, dev.id, msg.body, msg.received_at)
                elif msg.kind == "event":  # issue 4: stored below, de-duplicated by event_id
                    event_rows.append(events.event_row(dev.id, msg.body, msg.received_at))
                elif msg.kind == "update_state":  # issue 6: a campaign's device moves on
                    if not rollout_store.apply_update_state(db, dev.id, msg.body, msg.received_at):
                        stats.ignored += 1
                else:
                    stats.ignored += 1
            for dev_id, msg in latest.items():
                self._apply_latest(devices[dev_id], msg)
            if event_rows:  # issue 20: images the site's policy forbids are not stored
                stats.images_refused += privacy_gate.screen_events(
                    db, event_rows, batch[-1].received_at
                )
            stored, dups = events.store_events(db, event_rows)
            stats.events += stored
            stats.duplicates += dups
            stats.alerts += receipts.track(db, batch, batch[-1].received_at if batch else 0.0)
            if self.alerts is not None:
                self._run_alerts(db, self.alerts, devices, stats)
        return stats

    @staticmethod
    def _ensure_devices(db: Session, batch: Sequence[Accepted]) -> None:
        """Make sure every device of the batch has a row (ON CONFLICT DO NOTHING, in id
        order: two workers adding the same new devices wait for each other, in one order)."""
        first: dict[str, Accepted] = {}
        for msg in batch:
            first.setdefault(msg.device_id, msg)
        ids = sorted(first)
        existing = set(db.scalars(select(Device.id).where(Device.id.in_(ids))).all())
        new = [
            {
                "id": dev_id,
                "kind": _device_kind(first[dev_id].body),
                "state": health.UNKNOWN,
                "state_ts": 0.0,
                "state_changed_at": first[dev_id].received_at,
                "first_seen": first[dev_id].received_at,
                "last_seen": first[dev_id].received_at,
                "seq_gaps": 0,
                "versions": {},
            }
            for dev_id in ids
            if dev_id not in existing
        ]
        if new:
            db.execute(_insert(db, Device).on_conflict_do_nothing(index_elements=["id"]), new)

    @staticmethod
    def _lock_devices(db: Session, batch: Sequence[Accepted]) -> dict[str, Device]:
        """Lock the batch's device rows, in id order.

        Several ingest workers may hold messages of the same device at once (a shared
        subscription spreads messages, not devices), so the rows are read FOR NO KEY
        UPDATE in id order: two workers never interleave their updates of one device and
        never deadlock on each other. Not FOR UPDATE: that lock also conflicts with the
        KEY SHARE lock a heartbeat insert takes on its device (the foreign key), so a
        worker that stored its heartbeats and waits here would block the holder's own.
        """
        ids = sorted({msg.device_id for msg in batch})
        rows = db.scalars(
            select(Device)
            .where(Device.id.in_(ids))
            .order_by(Device.id)
            .with_for_update(key_share=True)
        ).all()
        return {dev.id: dev for dev in rows}

    @staticmethod
    def _set_state(
        dev: Device, state: str, reason: str | None, at: float, stats: ApplyStats
    ) -> None:
        if dev.state != state:
            dev.state_changed_at = at
            (stats.went_online if state == health.ONLINE else stats.went_offline).append(dev.id)
        dev.state = state
        # the column holds 64; a status may say 256 (issue 15: longer was a dead letter)
        dev.state_reason = reason[:64] if reason is not None else None

    def _heartbeat(
        self,
        dev: Device,
        msg: Accepted,
        stats: ApplyStats,
        latest: dict[str, Accepted],
    ) -> None:
        """Check one heartbeat against the device's last one. The device's "last heartbeat"
        columns are written once per batch (``_apply_latest``), from the newest one: ORM
        attribute writes were a large part of the cost of a batch."""
        body = msg.body
        prev = latest.get(dev.id)
        if prev is not None:
            last_seq: int | None = int(prev.body["seq"])
            last_ts = prev.body["ts"]
        else:
            last_seq, last_ts = dev.last_seq, (dev.last_heartbeat or {}).get("ts")
        step = health.seq_step(last_seq, int(body["seq"]), last_ts, body["ts"])
        if step.duplicate and last_ts == body["ts"]:
            stats.duplicates += 1
            return
        if step.gap:
            dev.seq_gaps = max(0, (dev.seq_gaps or 0) + step.gap)
        stats.heartbeats += 1
        if step.late:
            return  # stored in the history; the device's latest view stays as it is
        stats.observed.append((dev.id, body, msg.received_at))
        latest[dev.id] = msg
        versions = body.get("versions")
        if isinstance(versions, dict) and versions != dev.versions:
            dev.versions = versions
        if "hardware" in body:  # sent after each connect only: kept till the next
            hardware = inventory.clean_hardware(body["hardware"])
            if hardware is not None:
                dev.hardware = hardware
        # a heartbeat proves the device is up, whatever an older status said
        if dev.state != health.ONLINE or dev.state_reason is not None:
            self._set_state(dev, health.ONLINE, None, msg.received_at, stats)

    @staticmethod
    def _apply_latest(dev: Device, msg: Accepted) -> None:
        body = msg.body
        dev.last_seq = int(body["seq"])
        dev.kind = str(body["kind"])
        dev.last_seen = msg.received_at
        dev.last_heartbeat_at = msg.received_at
        dev.heartbeat_interval_s = float(body["interval_s"])
        dev.last_heartbeat = body

    @staticmethod
    def _run_alerts(
        db: Session, book: AlertBook, devices: dict[str, Device], stats: ApplyStats
    ) -> None:
        """In the batch's transaction, with the device rows locked: state changes first
        (offline opens its alert at once), then the rules on each new heartbeat."""
        states = [
            (dev_id, devices[dev_id].state, devices[dev_id].state_reason,
             devices[dev_id].state_changed_at)
            for dev_id in dict.fromkeys(stats.went_offline + stats.went_online)
        ]  # fmt: skip
        stats.alerts += book.observe_batch(db, states, stats.observed)

    def _status(self, dev: Device, msg: Accepted, stats: ApplyStats) -> None:
        body = msg.body
        stats.statuses += 1
        if not health.accept_status(dev.state_ts, float(body["ts"])):
            return
        dev.state_ts = float(body["ts"])
        dev.kind = str(body["kind"])
        dev.last_seen = max(dev.last_seen, msg.received_at)
        state = str(body["state"])
        reason = body.get("reason")
        if state == health.OFFLINE and not reason:
            reason = health.REASON_WILL
        why = reason if isinstance(reason, str) else None
        self._set_state(dev, state, why, msg.received_at, stats)

    def mark_overdue(self, now: float, grace: float) -> tuple[list[str], list[AlertChange]]:
        """Mark online devices whose heartbeat deadline passed as offline.

        Returns their ids and the alert changes. Rows another worker holds are skipped
        (that worker is storing a message of the device right now) and looked at next time.
        """
        gone: list[str] = []
        changes: list[AlertChange] = []
        with self.sessions.begin() as db:
            rows = db.scalars(
                select(Device)
                .where(Device.state == health.ONLINE)
                .order_by(Device.id)
                .with_for_update(skip_locked=True, key_share=True)  # see _lock_devices
            ).all()
            for dev in rows:
                if health.is_overdue(dev.last_seen, dev.heartbeat_interval_s, grace, now):
                    dev.state = health.OFFLINE
                    dev.state_reason = health.REASON_DEADLINE
                    dev.state_changed_at = now
                    gone.append(dev.id)
            if self.alerts is not None and gone:
                states = [(d, health.OFFLINE, health.REASON_DEADLINE, now) for d in gone]
                changes = self.alerts.observe_batch(db, states, [])
        return gone, changes

    def expire_commands(self, now: float) -> list[str]:
        with self.sessions.begin() as db:
            return commands.expire(db, now)

    # ---------------------------------------------------------------- reads
    def list_devices(
        self,
        state: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        tags: Sequence[str] = (),
        hardware: str | None = None,
    ) -> tuple[list[Device], int]:
        """A page of devices; ``tags`` must all be on a device, ``hardware`` is a part of
        its board model."""
        with self.sessions() as db:
            query = inventory.filter_devices(select(Device), tags, hardware, state=state, kind=kind)
            return page(db, query, limit, offset, Device.id)

    def tags_of(self, device_ids: Sequence[str]) -> dict[str, list[str]]:
        with self.sessions() as db:
            return inventory.tags_of(db, device_ids)

    def get_device(self, device_id: str) -> Device | None:
        with self.sessions() as db:
            return db.get(Device, device_id)

    def state_counts(self) -> dict[str, int]:
        with self.sessions() as db:
            rows = db.execute(select(Device.state, func.count()).group_by(Device.state)).all()
            return {str(state): int(n) for state, n in rows}

    def heartbeat_count(self) -> int:
        with self.sessions() as db:
            return int(db.scalar(select(func.count()).select_from(Heartbeat)) or 0)
