"""The device registry: applies accepted messages in batches and answers queries."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from fleet_server import commands, events, health
from fleet_server.alerts import AlertBook, AlertChange
from fleet_server.db import Base, Device, Heartbeat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A message that passed the contract, waiting to be stored."""

    device_id: str
    kind: str
    body: dict[str, Any]
    received_at: float


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


def _insert(db: Session, table: type[Base]) -> Any:
    """INSERT with ON CONFLICT support for the dialect in use (SQLite or PostgreSQL)."""
    if db.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


class Registry:
    def __init__(self, sessions: sessionmaker[Session], alerts: AlertBook | None = None) -> None:
        self.sessions = sessions
        self.alerts = alerts

    # ---------------------------------------------------------------- writes
    def apply(self, batch: Sequence[Accepted]) -> ApplyStats:
        """Store a batch in one transaction."""
        stats = ApplyStats()
        with self.sessions.begin() as db:
            devices = self._lock_devices(db, batch)
            rows: list[dict[str, Any]] = []
            event_rows: list[dict[str, Any]] = []
            for msg in batch:
                dev = devices[msg.device_id]
                if msg.kind == "heartbeat":
                    self._heartbeat(dev, msg, stats, rows)
                elif msg.kind == "status":
                    self._status(dev, msg, stats)
                elif msg.kind == "cmd_res":
                    done = commands.apply_response(db, dev.id, msg.body, msg.received_at)
                    stats.command_results += done is not None
                elif msg.kind == "config_reported":
                    commands.apply_report(db, dev.id, msg.body, msg.received_at)
                elif msg.kind == "event":  # issue 4: stored below, de-duplicated by event_id
                    event_rows.append(events.event_row(dev.id, msg.body, msg.received_at))
                else:
                    stats.ignored += 1
            db.flush()  # new devices first: heartbeats refer to them
            stored, dups = events.store_events(db, event_rows)
            stats.events += stored
            stats.duplicates += dups
            if rows:
                # the unique (device, seq, ts) index drops a redelivery another worker stored
                db.execute(_insert(db, Heartbeat).on_conflict_do_nothing(), rows)
            if self.alerts is not None:
                self._run_alerts(db, self.alerts, devices, stats)
        return stats

    @staticmethod
    def _lock_devices(db: Session, batch: Sequence[Accepted]) -> dict[str, Device]:
        """Make sure every device of the batch has a row, and lock those rows.

        Several ingest workers may hold messages of the same device at once (a shared
        subscription spreads messages, not devices). New rows are inserted with ON CONFLICT
        DO NOTHING, then all rows are read FOR UPDATE in id order, so two workers never
        interleave their updates of one device and never deadlock on each other.
        """
        first: dict[str, Accepted] = {}
        for msg in batch:
            first.setdefault(msg.device_id, msg)
        ids = sorted(first)
        existing = set(db.scalars(select(Device.id).where(Device.id.in_(ids))).all())
        new = [
            {
                "id": dev_id,
                "kind": str(first[dev_id].body.get("kind", "agent")),
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
        rows = db.scalars(
            select(Device).where(Device.id.in_(ids)).order_by(Device.id).with_for_update()
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
        dev.state_reason = reason

    def _heartbeat(
        self, dev: Device, msg: Accepted, stats: ApplyStats, rows: list[dict[str, Any]]
    ) -> None:
        body = msg.body
        last = dev.last_heartbeat or {}
        step = health.seq_step(dev.last_seq, int(body["seq"]), last.get("ts"), body["ts"])
        if step.duplicate and last.get("ts") == body["ts"]:
            stats.duplicates += 1
            return
        dev.seq_gaps = max(0, (dev.seq_gaps or 0) + step.gap)
        rows.append(
            {
                "device_id": dev.id,
                "seq": int(body["seq"]),
                "ts": float(body["ts"]),
                "received_at": msg.received_at,
                "body": body,
            }
        )
        stats.heartbeats += 1
        if step.late:
            return  # stored in the history; the device's latest view stays as it is
        stats.observed.append((dev.id, body, msg.received_at))
        dev.last_seq = int(body["seq"])
        dev.kind = str(body["kind"])
        dev.last_seen = msg.received_at
        dev.last_heartbeat_at = msg.received_at
        dev.heartbeat_interval_s = float(body["interval_s"])
        dev.last_heartbeat = body
        if isinstance(body.get("versions"), dict):
            dev.versions = body["versions"]
        # a heartbeat proves the device is up, whatever an older status said
        self._set_state(dev, health.ONLINE, None, msg.received_at, stats)

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
                .with_for_update(skip_locked=True)
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
        self, state: str | None = None, kind: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[Device], int]:
        with self.sessions() as db:
            query = select(Device)
            count = select(func.count()).select_from(Device)
            if state:
                query = query.where(Device.state == state)
                count = count.where(Device.state == state)
            if kind:
                query = query.where(Device.kind == kind)
                count = count.where(Device.kind == kind)
            rows = db.scalars(query.order_by(Device.id).limit(limit).offset(offset)).all()
            total = db.scalar(count) or 0
            return list(rows), int(total)

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
