"""Reads for the operations pages: the sites with their state, last heartbeat and last
snapshot; counts per site, line, class and direction over time; events of the whole fleet
with filters. Queries only; the pages and exports shape what these return."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.dashboard.sitemap import RANK, Mark
from fleet_server.dashboard.views import degraded_ids
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning, Site
from fleet_server.ingest.events import Event

EVENTS_PAGE = 100


def site_of_devices(db: Session, device_ids: Sequence[str] | None = None) -> dict[str, str]:
    """device id -> site id, from each device's latest commissioning record."""
    query = select(Commissioning.device_id, Commissioning.site_id)
    if device_ids is not None:
        query = query.where(Commissioning.device_id.in_(list(device_ids)))
    out: dict[str, str] = {}
    for device_id, site_id in db.execute(query.order_by(Commissioning.received_at)).all():
        out[str(device_id)] = str(site_id)
    return out


def site_marks(db: Session) -> list[Mark]:
    sites = db.scalars(select(Site).order_by(Site.site_id)).all()
    where = site_of_devices(db)
    degraded = degraded_ids(db)
    at: dict[str, list[Any]] = defaultdict(list)  # rows of (id, state, last_seen)
    for dev in db.execute(select(Device.id, Device.state, Device.last_seen)).all():
        if dev.id in where:
            at[where[dev.id]].append(dev)
    newest = (
        select(Event.device_id, func.max(Event.ts).label("ts"))
        .where(Event.type == "snapshot").group_by(Event.device_id).subquery()
    )  # fmt: skip
    snaps: dict[str, tuple[str, str, float]] = {}
    rows = db.execute(
        select(Event.device_id, Event.event_id, Event.ts).join(
            newest, (Event.device_id == newest.c.device_id) & (Event.ts == newest.c.ts)
        ).where(Event.type == "snapshot")
    ).all()  # fmt: skip
    for device_id, event_id, ts in rows:
        snaps[str(device_id)] = (str(device_id), str(event_id), float(ts))
    marks = []
    for s in sites:
        if s.lat is None or s.lon is None:
            continue
        devs = at.get(s.site_id, [])
        states = [
            "degraded" if d.state == "online" and d.id in degraded else d.state for d in devs
        ] or ["unknown"]
        seen = [d.last_seen for d in devs if d.last_seen]
        snap = max((snaps[d.id] for d in devs if d.id in snaps), key=lambda e: e[2], default=None)
        marks.append(Mark(
            s.site_id, s.name, s.lat, s.lon, max(states, key=lambda x: RANK.get(x, 1)),
            tuple(sorted(d.id for d in devs)), max(seen, default=None), snap,
        ))  # fmt: skip
    return marks


@dataclass(frozen=True)
class CountRow:
    """One counts interval of one device, one line (or zone), class and direction."""

    site_id: str
    device_id: str
    start: float
    end: float
    line: str
    kind: str  # "line" or "zone"
    label: str  # object class, as the detector names it
    direction: str  # the line's direction name, "enter" for a zone
    count: int


def count_rows(
    db: Session, since: float, until: float, site: str = "", device: str = "", limit: int = 200_000
) -> list[CountRow]:
    where = site_of_devices(db)
    query = select(Event.device_id, Event.ts, Event.data).where(
        Event.type == "counts", Event.ts >= since, Event.ts < until
    )
    if device:
        query = query.where(Event.device_id == device)
    if site:
        query = query.where(Event.device_id.in_([d for d, s in where.items() if s == site]))
    out: list[CountRow] = []
    for device_id, ts, data in db.execute(query.order_by(Event.ts).limit(limit)).all():
        if not isinstance(data, dict):
            continue
        end = _num(data.get("end_ts"), ts)
        start = _num(data.get("start_ts"), end)
        sid = where.get(str(device_id), "")
        for line, per_class in _items(data.get("lines")):
            for label, per_dir in _items(per_class):
                for direction, n in _items(per_dir):
                    if _count(n):
                        out.append(CountRow(sid, device_id, start, end, line, "line", label,
                                            direction, int(n)))  # fmt: skip
        for zone, per_class in _items(data.get("zones")):
            for label, n in _items(per_class):
                if _count(n):
                    out.append(CountRow(sid, device_id, start, end, zone, "zone", label,
                                        "enter", int(n)))  # fmt: skip
    return out


def _items(value: object) -> list[tuple[str, Any]]:
    return sorted((str(k), v) for k, v in value.items()) if isinstance(value, dict) else []


def _count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _num(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float(default)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )  # fmt: skip


@dataclass(frozen=True)
class EventFilter:
    site: str = ""
    device: str = ""
    label: str = ""
    type: str = ""
    since: float | None = None
    until: float | None = None


def find_events(
    db: Session, f: EventFilter, offset: int = 0, limit: int = EVENTS_PAGE
) -> tuple[list[Event], int, dict[str, str]]:
    """Events of the whole fleet, newest first: (page, total matching, device -> site)."""
    where = site_of_devices(db)
    query = select(Event)
    if f.device:
        query = query.where(Event.device_id == f.device)
    if f.site:
        query = query.where(Event.device_id.in_([d for d, s in where.items() if s == f.site]))
    if f.type:
        query = query.where(Event.type == f.type)
    if f.since is not None:
        query = query.where(Event.ts >= f.since)
    if f.until is not None:
        query = query.where(Event.ts < f.until)
    if f.label:
        # the class is inside the JSON data: filtered here, on a bounded window
        rows = db.scalars(query.order_by(Event.ts.desc()).limit(20_000)).all()
        found = [e for e in rows if isinstance(e.data, dict) and e.data.get("label") == f.label]
        return found[offset : offset + limit], len(found), where
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = db.scalars(query.order_by(Event.ts.desc(), Event.id.desc())
                      .offset(offset).limit(limit)).all()  # fmt: skip
    return list(page), total, where
