"""Queries of the event streams: tracking a committed batch, ageing holes into losses,
reading for the API, the page and /metrics.

``track`` runs inside the registry's transaction, after the batch's events are stored and
with the batch's device rows locked (so two workers never race on one device's stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleet_server.health.alerts import ACTIVE, OPEN, Alert, AlertChange
from fleet_server.receipts import track as tr
from fleet_server.receipts.model import EventStream

LOST_RULE = "events_lost"
_COUNTERS = {"outbox_refused", "outbox_unreceipted", "outbox_dropped"}
MAX_DROPPED_SPAN = 100_000  # a drop report naming more is not trusted for accounting


class Message(Protocol):
    @property
    def device_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def body(self) -> dict[str, Any]: ...


@dataclass
class Totals:
    lost: int = 0
    open: int = 0
    refused: int = 0
    dropped: int = 0
    late: int = 0
    unreceipted: int = 0


def _epoch(body: dict[str, Any]) -> str | None:
    e = body.get("epoch")
    return e if isinstance(e, str) else None


def _dropped_at_source(body: dict[str, Any]) -> list[int]:
    """A node's ``buffer.dropped`` report stands for the events its full ring lost: their
    numbers are no hole (the device counted them, ``outbox_dropped``), not a loss here."""
    if body.get("type") != "buffer.dropped" or not isinstance(body.get("data"), dict):
        return []
    first, last = body["data"].get("first_seq"), body["data"].get("last_seq")
    if not (isinstance(first, int) and isinstance(last, int)) or isinstance(first, bool):
        return []
    if not 0 <= first <= last <= int(body["seq"]) or last - first > MAX_DROPPED_SPAN:
        return []
    return list(range(first, last + 1))


def _ensure(db: Session, ids: Iterable[str], now: float) -> dict[str, EventStream]:
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = [
        {"device_id": d, "epoch": "", "top": -1, "holes": [], "open_count": 0, "lost": 0,
         "lost_ranges": [], "late": 0, "old_epochs": [], "refused": 0, "dropped": 0,
         "unreceipted": 0, "updated_at": now}
        for d in ids
    ]  # fmt: skip
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(EventStream).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(EventStream).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = insert(EventStream)
    db.execute(stmt, rows)
    got = db.scalars(
        select(EventStream)
        .where(EventStream.device_id.in_(ids))
        .order_by(EventStream.device_id)
        .with_for_update()
    ).all()
    return {r.device_id: r for r in got}


def track(db: Session, batch: Sequence[Message], now: float) -> list[AlertChange]:
    """Account for the batch's events (those that carry an ``epoch``) and take the
    devices' own counters from its heartbeats. Returns alert changes (losses counted when
    a device moved to a new stream)."""
    seqs: dict[str, dict[str, list[int]]] = {}  # device -> epoch -> seqs, in batch order
    beats: dict[str, dict[str, Any]] = {}
    for m in batch:
        if m.kind == "event":
            epoch = _epoch(m.body)
            if epoch is not None:
                numbers = seqs.setdefault(m.device_id, {}).setdefault(epoch, [])
                numbers.append(int(m.body["seq"]))
                numbers += _dropped_at_source(m.body)
        elif m.kind == "heartbeat" and _COUNTERS & m.body.keys():
            beats[m.device_id] = m.body
    if not seqs and not beats:
        return []
    rows = _ensure(db, list(seqs) + list(beats), now)
    changes: list[AlertChange] = []
    for device_id, by_epoch in seqs.items():
        row = rows[device_id]
        s = row.stream()
        lost: list[list[int]] = []
        for epoch, found in by_epoch.items():
            out = tr.Outcome()
            if tr.switch_epoch(s, epoch, out):
                got = tr.receive(s, found, now)
                lost += out.lost_ranges + got.lost_ranges
        row.keep(s, now)
        if lost:
            changes += _alert(db, device_id, lost, s.lost, now)
    for device_id, body in beats.items():
        row = rows[device_id]
        row.refused = int(body.get("outbox_refused", row.refused) or 0)
        row.dropped = int(body.get("outbox_dropped", row.dropped) or 0)
        row.unreceipted = int(body.get("outbox_unreceipted", row.unreceipted) or 0)
    return changes


def age(db: Session, now: float, lost_after_s: float) -> list[AlertChange]:
    """Count holes open longer than ``lost_after_s`` as lost; alert changes to send."""
    rows = db.scalars(
        select(EventStream)
        .where(EventStream.open_count > 0)
        .order_by(EventStream.device_id)
        .with_for_update()
    ).all()
    changes: list[AlertChange] = []
    for row in rows:
        s = row.stream()
        out = tr.age(s, now, lost_after_s)
        if out.new_lost:
            row.keep(s, now)
            changes += _alert(db, row.device_id, out.lost_ranges, s.lost, now)
    return changes


def _alert(
    db: Session, device_id: str, ranges: list[list[int]], total: int, at: float
) -> list[AlertChange]:
    """Open the device's ``events_lost`` alert unless one is active (it stays until an
    operator resolves it: a loss does not heal)."""
    active = db.scalars(
        select(Alert).where(
            Alert.device_id == device_id, Alert.rule == LOST_RULE, Alert.state.in_(ACTIVE)
        )
    ).first()
    shown = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges[:4])
    msg = f"{total} events lost (seq {shown}{', …' if len(ranges) > 4 else ''})"
    if active is not None:
        active.message = msg[:256]
        active.value = str(total)
        return []
    alert = Alert(device_id=device_id, rule=LOST_RULE, severity="critical", state=OPEN,
                  message=msg[:256], value=str(total), opened_at=at)  # fmt: skip
    db.add(alert)
    db.flush()
    return [AlertChange(alert.id, device_id, LOST_RULE, "critical", OPEN, alert.message, at)]


def get(db: Session, device_id: str) -> dict[str, Any] | None:
    row = db.get(EventStream, device_id)
    if row is None:
        return None
    out = row.stream().as_json()
    out["open"] = int(row.open_count)
    out["refused"] = int(row.refused)
    out["dropped"] = int(row.dropped)
    out["unreceipted"] = int(row.unreceipted)
    out["updated_at"] = row.updated_at
    return out


def totals(db: Session) -> Totals:
    r = db.execute(
        select(
            func.coalesce(func.sum(EventStream.lost), 0),
            func.coalesce(func.sum(EventStream.open_count), 0),
            func.coalesce(func.sum(EventStream.refused), 0),
            func.coalesce(func.sum(EventStream.dropped), 0),
            func.coalesce(func.sum(EventStream.late), 0),
            func.coalesce(func.sum(EventStream.unreceipted), 0),
        )
    ).one()
    return Totals(*(int(v) for v in r))
