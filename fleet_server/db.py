"""Registry tables (SQLAlchemy 2) and the engine. The schema is owned by Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

_Row = TypeVar("_Row")


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    state_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # device clock of the status message that set the state (older ones are ignored)
    state_ts: Mapped[float] = mapped_column(Float, default=0.0)
    state_changed_at: Mapped[float] = mapped_column(Float)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    heartbeat_interval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    seq_gaps: Mapped[int] = mapped_column(Integer, default=0)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_heartbeat: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # latest hardware inventory the device reported (heartbeat ``hardware``), if any
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Heartbeat(Base):
    __tablename__ = "heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_heartbeats_device_ts", "device_id", "ts"),
        Index("ux_heartbeats_device_seq_ts", "device_id", "seq", "ts", unique=True),
    )


class DeviceTag(Base):
    """A free label on a device (``phase:1``, ``district:north``); a device has a set."""

    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_device_tags_tag", "tag"),)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


def page(
    db: Session, query: Select[tuple[_Row]], limit: int, offset: int, *order: Any
) -> tuple[list[_Row], int]:
    """One page of ``query`` in ``order``, and how many rows the whole query has (the
    API's list endpoints: filters on ``query``, then this)."""
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
    return list(rows), int(total)
