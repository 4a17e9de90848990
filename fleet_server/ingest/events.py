"""Device events: the table and storing with de-duplication (the API is ``ingest/api.py``).

Devices resend whatever the broker did not acknowledge, so an event may arrive twice (or
more). ``event_id`` is unique: ``store_events`` skips ids already stored or repeated within
the batch, and inserts with ON CONFLICT DO NOTHING so two server workers storing the same
event at once cannot fail or double it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet_server.db import Base
from fleet_server.ingest.jpeg import checked_snapshot


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(256))
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_events_device_ts", "device_id", "ts"),
        Index("ix_events_type_ts", "type", "ts"),
    )


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
    fresh: dict[str, dict[str, Any]] = {}
    for row in rows:
        fresh.setdefault(row["event_id"], row)
    known = set(db.scalars(select(Event.event_id).where(Event.event_id.in_(list(fresh)))).all())
    new = [r for eid, r in fresh.items() if eid not in known]
    if new:
        dialect = db.get_bind().dialect.name
        if dialect == "postgresql":
            db.execute(
                postgresql.insert(Event).on_conflict_do_nothing(index_elements=["event_id"]), new
            )
        elif dialect == "sqlite":
            db.execute(
                sqlite.insert(Event).on_conflict_do_nothing(index_elements=["event_id"]), new
            )
        else:
            db.execute(insert(Event), new)
    return len(new), len(rows) - len(new)


# ---------------------------------------------------------------- reads
