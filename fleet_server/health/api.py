"""REST endpoints for alerts: list with filters, acknowledge."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.db import page
from fleet_server.health.alerts import Alert, AlertBook, AlertError
from fleet_server.health.notify import Notifier

AlertState = Literal["open", "acknowledged", "resolved"]


class AlertOut(BaseModel):
    id: int
    device_id: str
    rule: str = Field(description="Which health rule (offline, temperature, disk, ...)")
    severity: Literal["warning", "critical"]
    state: AlertState
    message: str
    value: str | None = Field(description="The reading that broke the rule")
    opened_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    resolved_at: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    limit: int
    offset: int


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=256, description="Why, for the audit log")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def alert_out(a: Alert) -> AlertOut:
    return AlertOut(
        id=a.id,
        device_id=a.device_id,
        rule=a.rule,
        severity=a.severity,
        state=a.state,
        message=a.message,
        value=a.value,
        opened_at=_iso(a.opened_at) or "",
        acknowledged_at=_iso(a.acknowledged_at),
        acknowledged_by=a.acknowledged_by,
        resolved_at=_iso(a.resolved_at),
    )


def alerts_router(sessions: sessionmaker[Session], notifier: Notifier) -> APIRouter:
    router = APIRouter(
        prefix="/api/alerts",
        tags=["alerts"],
        dependencies=[Depends(require_role(*READERS))],
        responses=AUTH_RESPONSES,
    )

    @router.get("", response_model=AlertPage)
    def list_alerts(
        state: Annotated[AlertState | None, Query(description="Filter by state")] = None,
        active: Annotated[bool, Query(description="Only open or acknowledged")] = False,
        device_id: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> AlertPage:
        query = select(Alert)
        if state:
            query = query.where(Alert.state == state)
        if active:
            query = query.where(Alert.state.in_(("open", "acknowledged")))
        if device_id:
            query = query.where(Alert.device_id == device_id)
        with sessions() as db:
            rows, total = page(db, query, limit, offset, Alert.opened_at.desc(), Alert.id.desc())
            return AlertPage(
                items=[alert_out(a) for a in rows], total=total, limit=limit, offset=offset
            )

    @router.post(
        "/{alert_id}/acknowledge",
        response_model=AlertOut,
        responses={
            404: {"description": "No such alert"},
            409: {"description": "Not open"},
            **AUTH_RESPONSES,
        },
    )
    def acknowledge(
        alert_id: Annotated[int, Path(ge=1, le=2**31)],
        body: AckIn,
        who: Annotated[Actor, Depends(require_role(OPERATOR))],
    ) -> AlertOut:
        try:
            with sessions.begin() as db:
                change = AlertBook.acknowledge(db, alert_id, who.name, time.time())
                audit.record(
                    db, who, "alert.acknowledge", str(alert_id), "ok",
                    {"note": body.note} if body.note else None,
                )  # fmt: skip
        except AlertError as exc:
            with sessions() as db:
                exists = db.get(Alert, alert_id) is not None
            raise HTTPException(status_code=409 if exists else 404, detail=str(exc)) from exc
        notifier.send([change])
        with sessions() as db:
            alert = db.get(Alert, alert_id)
            if alert is None:  # deleted in between: nothing to show
                raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
            return alert_out(alert)

    return router
