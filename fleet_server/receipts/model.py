"""The ``event_streams`` table: one row per device (migration 0009)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db import Base
from fleet_server.receipts.track import Stream


class EventStream(Base):
    __tablename__ = "event_streams"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[str] = mapped_column(String(256), default="")
    top: Mapped[int] = mapped_column(BigInteger, default=-1)
    holes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    open_count: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    lost: Mapped[int] = mapped_column(BigInteger, default=0)
    lost_ranges: Mapped[list[Any]] = mapped_column(JSON, default=list)
    late: Mapped[int] = mapped_column(BigInteger, default=0)
    old_epochs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # the device's own counters, from its latest heartbeat
    refused: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    unreceipted: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)

    def stream(self) -> Stream:
        return Stream(
            epoch=self.epoch or "",
            top=int(self.top if self.top is not None else -1),
            holes=[list(h) for h in (self.holes or [])],
            lost=int(self.lost or 0),
            lost_ranges=[list(r) for r in (self.lost_ranges or [])],
            late=int(self.late or 0),
            old_epochs=list(self.old_epochs or []),
        )

    def keep(self, s: Stream, now: float) -> None:
        self.epoch = s.epoch
        self.top = s.top
        self.holes = [list(h) for h in s.holes]
        self.open_count = s.open_count()
        self.lost = s.lost
        self.lost_ranges = [list(r) for r in s.lost_ranges]
        self.late = s.late
        self.old_epochs = list(s.old_epochs)
        self.updated_at = now
