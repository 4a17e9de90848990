"""A device's health history: raw heartbeats of the last day, hourly roll-ups before that."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.db import Device, Heartbeat
from fleet_server.health.retention import FIELDS, HealthRollup
from fleet_server.params import DeviceId


class RawPoint(BaseModel):
    ts: float = Field(description="Device time of the heartbeat (Unix seconds)")
    seq: int
    values: dict[str, float] = Field(description="The numeric readings it carried")


class HourPoint(BaseModel):
    bucket: float = Field(description="Start of the hour (Unix seconds)")
    count: int = Field(description="Heartbeats in that hour")
    stats: dict[str, list[float]] = Field(description="reading -> [n, min, mean, max]")


class HealthHistory(BaseModel):
    device_id: str
    raw: list[RawPoint]
    hourly: list[HourPoint]


def health_router(sessions: sessionmaker[Session]) -> APIRouter:
    router = APIRouter(
        tags=["health"], dependencies=[Depends(require_role(*READERS))], responses=AUTH_RESPONSES
    )

    @router.get(
        "/api/devices/{device_id}/health",
        response_model=HealthHistory,
        responses={404: {"description": "No such device"}},
    )
    def history(
        device_id: DeviceId,
        since: Annotated[float | None, Query(ge=0, description="From (Unix time)")] = None,
        until: Annotated[float | None, Query(ge=0, description="Until (Unix time)")] = None,
        limit: Annotated[int, Query(ge=1, le=5000, description="Most raw points")] = 1000,
    ) -> HealthHistory:
        start = since if since is not None else time.time() - 7 * 86400
        end = until if until is not None else time.time() + 60
        with sessions() as db:
            if db.get(Device, device_id) is None:
                raise HTTPException(404, f"device {device_id} not found")
            beats = db.scalars(
                select(Heartbeat).where(Heartbeat.device_id == device_id, Heartbeat.ts >= start,
                                        Heartbeat.ts < end)
                .order_by(Heartbeat.ts.desc()).limit(limit)
            ).all()  # fmt: skip
            hours = db.scalars(
                select(HealthRollup).where(HealthRollup.device_id == device_id,
                                           HealthRollup.bucket >= start - 3600,
                                           HealthRollup.bucket < end)
                .order_by(HealthRollup.bucket)
            ).all()  # fmt: skip
            raw = [RawPoint(ts=b.ts, seq=b.seq, values=_numbers(b.body)) for b in reversed(beats)]
            hourly = [HourPoint(bucket=h.bucket, count=h.count, stats=h.stats) for h in hours]
        return HealthHistory(device_id=device_id, raw=raw, hourly=hourly)

    return router


def _numbers(body: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k in FIELDS
        if isinstance(v := body.get(k), int | float) and not isinstance(v, bool)
    }  # fmt: skip
