"""Dead letters: messages that passed the contract but could not be stored.

When a batch fails for a reason other than the database being away, the writer
(``safestore.SafeStore``) stores the batch again in halves until the message that breaks it stands
alone; that one is set aside here, with the error, and acknowledged. It is never tried
again, and it never holds up another device's messages. Operators list them with
``GET /api/dead-letters``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Float, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.db import Base, page
from fleet_server.params import DeviceFilter

log = logging.getLogger(__name__)

_MAX_PAYLOAD = 65536  # characters kept of a payload (a kind's limit is at most this)


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[float] = mapped_column(Float)
    failed_at: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(String(1024))
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_dead_letters_device", "device_id", "failed_at"),)


def payload_text(raw: bytes | None, body: dict[str, Any]) -> str:
    text = raw.decode("utf-8", "replace") if raw is not None else json.dumps(body, default=repr)
    return text[:_MAX_PAYLOAD]


def store_dead_letters(db: Session, rows: Sequence[dict[str, Any]]) -> None:
    for row in rows:
        db.add(DeadLetter(**row))


# ---------------------------------------------------------------- API


class DeadLetterOut(BaseModel):
    id: int
    device_id: str = Field(description="Device that sent the message")
    kind: str = Field(description="Message kind (heartbeat, event, ...)")
    received_at: str = Field(description="When ingest received it (UTC, ISO 8601)")
    failed_at: str = Field(description="When storing it failed and it was set aside (UTC)")
    error: str = Field(description="Why storing it failed")
    payload: str = Field(description="The payload as received")


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    total: int = Field(description="Dead letters matching the filter")
    limit: int
    offset: int


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def dead_letters_router(sessions: sessionmaker[Session]) -> APIRouter:
    router = APIRouter(
        tags=["ingest"], dependencies=[Depends(require_role(*READERS))], responses=AUTH_RESPONSES
    )

    @router.get("/api/dead-letters", response_model=DeadLetterPage)
    def list_dead_letters(
        device_id: DeviceFilter = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000, description="Skip this many")] = 0,
    ) -> DeadLetterPage:
        """Messages that passed the contract but could not be stored, newest first."""
        with sessions() as db:
            query = select(DeadLetter)
            if device_id:
                query = query.where(DeadLetter.device_id == device_id)
            rows, total = page(db, query, limit, offset, DeadLetter.id.desc())
            items = [
                DeadLetterOut(
                    id=r.id,
                    device_id=r.device_id,
                    kind=r.kind,
                    received_at=_iso(r.received_at),
                    failed_at=_iso(r.failed_at),
                    error=r.error,
                    payload=r.payload,
                )
                for r in rows
            ]
        return DeadLetterPage(items=items, total=total, limit=limit, offset=offset)

    return router
