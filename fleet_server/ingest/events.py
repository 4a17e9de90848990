"""Device events: the table and storing with de-duplication (the API is ``ingest/api.py``).

Devices resend whatever the broker did not acknowledge, so an event may arrive twice (or
more). An event belongs to its sender: (``device_id``, ``event_id``) is unique, never
``event_id`` alone, so nothing one device sends can make another's event a "duplicate"
(issue 15). ``store_events`` skips pairs already stored or repeated within the batch, and
inserts with ON CONFLICT DO NOTHING so two server workers storing the same event at once
cannot fail or double it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet_server.db import Base
from fleet_server.ingest.jpeg import checked_snapshot


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256))
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(256))
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("device_id", "event_id", name="uq_events_device_event"),
        Index("ix_events_device_ts", "device_id", "ts"),
        Index("ix_events_type_ts", "type", "ts"),
    )


def snapshot_url(device_id: str, event_id: str) -> str:
    """Where an event's snapshot is served: an event id is unique per device only."""
    return f"/api/events/{quote(event_id, safe='')}/snapshot.jpg?device_id={device_id}"


def event_row(device_id: str, body: dict[str, Any], received_at: float) -> dict[str, Any]:
    data = body.get("data")
    return {
        "event_id": str(body["event_id"]),
        "device_id": device_id,
        "seq": int(body["seq"]),
        "type": str(body["type"]),
        "ts": float(body["ts"]),
        "received_at": received_at,
        "data": checked_snapshot(data) if isinstance(data, dict) else {},
    }


def store_events(db: Session, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Insert new events in the caller's transaction; (stored, duplicates)."""
    if not rows:
        return 0, 0
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        fresh.setdefault((row["device_id"], row["event_id"]), row)
    known: set[tuple[str, str]] = set()
    keys = list(fresh)
    for start in range(0, len(keys), 200):  # bounded statements, on both dialects
        part = keys[start : start + 200]
        by_device: dict[str, list[str]] = {}
        for dev, eid in part:
            by_device.setdefault(dev, []).append(eid)
        cond = or_(*[(Event.device_id == dev) & Event.event_id.in_(eids)
                     for dev, eids in by_device.items()])  # fmt: skip
        found = db.execute(select(Event.device_id, Event.event_id).where(cond)).all()
        known.update((str(d), str(e)) for d, e in found)
    new = [r for key, r in fresh.items() if key not in known]
    if new:
        dialect = db.get_bind().dialect.name
        elements = ["device_id", "event_id"]
        if dialect == "postgresql":
            db.execute(
                postgresql.insert(Event).on_conflict_do_nothing(index_elements=elements), new
            )
        elif dialect == "sqlite":
            db.execute(sqlite.insert(Event).on_conflict_do_nothing(index_elements=elements), new)
        else:
            db.execute(insert(Event), new)
    return len(new), len(rows) - len(new)


# ---------------------------------------------------------------- reads
