"""The events API: ``/api/events``, ``/api/events/{event_id}/snapshot.jpg``, ``/api/counts``."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.db import page
from fleet_server.ingest.events import Event, snapshot_url
from fleet_server.ingest.jpeg import jpeg_problem
from fleet_server.params import DeviceFilter


class EventOut(BaseModel):
    event_id: str = Field(description="Unique id the device gave the event")
    device_id: str = Field(description="Device that sent it")
    seq: int = Field(description="Device's event sequence number")
    type: str = Field(description="Event type, e.g. track.new, scene.problem, counts")
    ts: str = Field(description="Device time of the event (UTC, ISO 8601)")
    received_at: str = Field(description="When the server stored it (UTC)")
    data: dict[str, Any] = Field(description="Event data (a snapshot's JPEG is left out)")


class EventPage(BaseModel):
    items: list[EventOut]
    total: int = Field(description="Events matching the filter")
    limit: int
    offset: int


class CountsOut(BaseModel):
    device_id: str | None
    since: float | None
    until: float | None
    intervals: int = Field(description="Counts events summed")
    lines: dict[str, dict[str, dict[str, int]]] = Field(description="line -> class -> dir -> n")
    zones: dict[str, dict[str, int]] = Field(description="zone -> class -> entries")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def event_out(ev: Event) -> EventOut:
    data = dict(ev.data or {})
    if "jpeg" in data:
        data["jpeg"] = snapshot_url(ev.device_id, ev.event_id)
    return EventOut(
        event_id=ev.event_id,
        device_id=ev.device_id,
        seq=ev.seq,
        type=ev.type,
        ts=_iso(ev.ts),
        received_at=_iso(ev.received_at),
        data=data,
    )


def _add(into: dict[str, Any], key: str, value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        into[key] = int(into.get(key, 0)) + value


def sum_counts(datas: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add up the ``lines`` and ``zones`` of counts events; malformed parts are skipped."""
    lines: dict[str, Any] = {}
    zones: dict[str, Any] = {}
    for data in datas:
        for line, per_class in (data.get("lines") or {}).items():
            if not isinstance(per_class, dict):
                continue
            for label, per_dir in per_class.items():
                if isinstance(per_dir, dict):
                    target = lines.setdefault(line, {}).setdefault(label, {})
                    for direction, n in per_dir.items():
                        _add(target, direction, n)
        for zone, per_class in (data.get("zones") or {}).items():
            if isinstance(per_class, dict):
                target = zones.setdefault(zone, {})
                for label, n in per_class.items():
                    _add(target, label, n)
    return lines, zones


def events_router(sessions: sessionmaker[Session]) -> APIRouter:
    router = APIRouter(
        tags=["events"],
        dependencies=[Depends(require_role(*READERS))],
        responses=AUTH_RESPONSES,
    )

    @router.get("/api/events", response_model=EventPage)
    def list_events(
        device_id: DeviceFilter = None,
        type: Annotated[
            str | None, Query(max_length=256, description="Only this event type")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000, description="Skip this many")] = 0,
    ) -> EventPage:
        with sessions() as db:
            query = select(Event)
            if device_id:
                query = query.where(Event.device_id == device_id)
            if type:
                query = query.where(Event.type == type)
            rows, total = page(db, query, limit, offset, Event.id)
            return EventPage(
                items=[event_out(r) for r in rows], total=total, limit=limit, offset=offset
            )

    @router.get(
        "/api/events/{event_id}/snapshot.jpg",
        response_class=Response,
        responses={
            404: {"description": "No such event or no snapshot in it"},
            409: {"description": "Several devices sent an event with this id: give device_id"},
        },
    )
    def snapshot(
        event_id: Annotated[str, Path(max_length=256)], device_id: DeviceFilter = None
    ) -> Response:
        """An event id is unique per device: ``device_id`` says whose (required when
        several devices used the same id)."""
        with sessions() as db:
            query = select(Event).where(Event.event_id == event_id)
            if device_id:
                query = query.where(Event.device_id == device_id)
            found = db.scalars(query.order_by(Event.id).limit(2)).all()
        if len(found) > 1:
            raise HTTPException(
                status_code=409,
                detail=f"event id {event_id} is used by several devices: give device_id",
            )
        ev = found[0] if found else None
        jpeg = (ev.data or {}).get("jpeg") if ev is not None else None
        if not isinstance(jpeg, str):
            raise HTTPException(status_code=404, detail=f"no snapshot in event {event_id}")
        try:
            raw = base64.b64decode(jpeg, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(status_code=404, detail="snapshot is not base64") from exc
        if jpeg_problem(raw) is not None:  # stored before ingest checked (issue 15)
            raise HTTPException(status_code=404, detail="snapshot is not a JPEG")
        return Response(raw, media_type="image/jpeg")

    @router.get("/api/counts", response_model=CountsOut)
    def counts(
        device_id: DeviceFilter = None,
        since: Annotated[float | None, Query(ge=0, description="From (Unix time)")] = None,
        until: Annotated[float | None, Query(ge=0, description="Until (Unix time)")] = None,
    ) -> CountsOut:
        with sessions() as db:
            query = select(Event.data).where(Event.type == "counts")
            if device_id:
                query = query.where(Event.device_id == device_id)
            if since is not None:
                query = query.where(Event.ts >= since)
            if until is not None:
                query = query.where(Event.ts < until)
            datas = [d for d in db.scalars(query.limit(100_000)).all() if isinstance(d, dict)]
        lines, zones = sum_counts(datas)
        return CountsOut(
            device_id=device_id,
            since=since,
            until=until,
            intervals=len(datas),
            lines=lines,
            zones=zones,
        )

    return router
