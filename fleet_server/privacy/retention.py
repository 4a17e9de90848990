"""Retention and data-subject requests: what a site's images and events are, deleting them
after the site's retention, exporting and erasing a site's images of a time range.

Where a device was when: each commissioning record puts its device at its site from the
record's arrival until the device's next record (the first one from the beginning: a box
sends before its record is in). Event time is the device's capture time (``ts``).
Every deletion is counted and written to the audit log in its transaction.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.commands.store import Command
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning
from fleet_server.ingest.events import Event
from fleet_server.privacy.model import SitePrivacy

DAY_S = 86400.0
NO_SITE = "-"  # devices never commissioned
IMAGE_KEY = "jpeg"


@dataclass(frozen=True)
class Stay:
    device_id: str
    site_id: str
    start: float  # -inf for a device's first record
    end: float  # +inf while it is there


def stays(db: Session) -> list[Stay]:
    rows = db.execute(
        select(Commissioning.device_id, Commissioning.site_id, Commissioning.received_at).order_by(
            Commissioning.device_id, Commissioning.received_at, Commissioning.id
        )
    ).all()
    out: list[Stay] = []
    for i, (device_id, site_id, at) in enumerate(rows):
        first = i == 0 or rows[i - 1][0] != device_id
        last = i == len(rows) - 1 or rows[i + 1][0] != device_id
        start = -math.inf if first else float(at)
        end = math.inf if last else float(rows[i + 1][2])
        out.append(Stay(str(device_id), str(site_id), start, end))
    return out


def _where(stay_list: list[Stay], since: float, until: float) -> Any:
    """Events of these stays with ``since <= ts < until``."""
    parts = []
    for s in stay_list:
        lo, hi = max(s.start, since), min(s.end, until)
        if lo < hi:
            cond = [Event.device_id == s.device_id]
            if lo > -math.inf:
                cond.append(Event.ts >= lo)
            if hi < math.inf:
                cond.append(Event.ts < hi)
            parts.append(and_(*cond))
    return or_(*parts) if parts else None


def site_images(db: Session, site_id: str, since: float, until: float, limit: int) -> list[Event]:
    """The site's events holding an image, ``since <= ts < until``, oldest first."""
    cond = _where([s for s in stays(db) if s.site_id == site_id], since, until)
    if cond is None:
        return []
    rows = db.scalars(
        select(Event).where(cond, Event.type == "snapshot").order_by(Event.ts).limit(limit)
    ).all()
    return [r for r in rows if isinstance((r.data or {}).get(IMAGE_KEY), str)]


def image_bytes(ev: Event) -> bytes:
    try:
        return base64.b64decode(str(ev.data[IMAGE_KEY]), validate=True)
    except (binascii.Error, ValueError, KeyError):
        return b""


def erase_images(
    db: Session, site_id: str, since: float, until: float, who: Actor, limit: int
) -> int:
    """Remove the site's images of the range (the events stay, marked); audited."""
    found = site_images(db, site_id, since, until, limit)
    for ev in found:
        data = dict(ev.data)
        data.pop(IMAGE_KEY, None)
        data["image_deleted"] = "subject_request"
        ev.data = data
    audit.record(db, who, "privacy.erase", site_id, "ok",
                 {"since": since, "until": until, "images": len(found)})  # fmt: skip
    return len(found)


def _command_images(db: Session, stay_list: list[Stay], cutoff: float) -> int:
    """Remove the images in ``snapshot`` command answers older than ``cutoff``."""
    devices = [s.device_id for s in stay_list]
    if not devices:
        return 0
    rows = db.scalars(
        select(Command).where(Command.device_id.in_(devices), Command.cmd == "snapshot",
                              Command.created_at < cutoff, Command.result.is_not(None))
    ).all()  # fmt: skip
    n = 0
    for cmd in rows:
        result = dict(cmd.result or {})
        if "jpeg_b64" in result:
            result.pop("jpeg_b64")
            result["image_deleted"] = "retention"
            cmd.result = result
            n += 1
    return n


def _retention_days(db: Session, default_days: int) -> dict[str, int]:
    return {
        r.site_id: r.retention_days or default_days for r in db.scalars(select(SitePrivacy)).all()
    }


def apply_retention(
    db: Session, now: float, default_days: int, batch: int, who: Actor = audit.SYSTEM
) -> dict[str, int]:
    """Delete up to ``batch`` events past their site's retention; {site: deleted}, each
    site's count in the audit log. Call again while it deletes (one batch a transaction)."""
    days = _retention_days(db, default_days)
    by_site: dict[str, list[Stay]] = {}
    for s in stays(db):
        by_site.setdefault(s.site_id, []).append(s)
    commissioned = {s.device_id for s in stays(db)}
    others = [d for d in db.scalars(select(Device.id)).all() if d not in commissioned]
    by_site[NO_SITE] = [Stay(d, NO_SITE, -math.inf, math.inf) for d in others]
    counts: dict[str, int] = {}
    left = batch
    for site_id, site_stays in sorted(by_site.items()):
        keep = days.get(site_id, default_days)
        cutoff = now - keep * DAY_S
        cond = _where(site_stays, -math.inf, cutoff)
        if cond is None or left <= 0:
            continue
        ids = db.scalars(select(Event.id).where(cond).order_by(Event.id).limit(left)).all()
        commands = _command_images(db, site_stays, cutoff)
        if not ids and not commands:
            continue
        snaps = db.scalars(select(Event.id).where(Event.id.in_(ids), Event.type == "snapshot"))
        n_images = len(snaps.all())
        db.execute(delete(Event).where(Event.id.in_(ids)))
        counts[site_id] = len(ids)
        left -= len(ids)
        audit.record(db, who, "privacy.retention", site_id, "ok",
                     {"deleted": len(ids), "snapshots": n_images, "command_images": commands,
                      "retention_days": keep, "before": cutoff})  # fmt: skip
    return counts
