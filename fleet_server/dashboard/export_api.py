"""Exports over the REST API (readers): counts as CSV and as NGSI-LD TrafficFlowObserved,
events as CSV. The dashboard links to these; a province's data platform can poll them."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.dashboard import exports, ops_data
from fleet_server.identity.model import Site

MAX_SPAN_S = 31 * 86400
SiteQ = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9-]*$", description="Site id")]
DeviceQ = Annotated[str, Query(max_length=64, description="Device id")]
Since = Annotated[float | None, Query(ge=0, description="From (Unix time); default a day ago")]
Until = Annotated[float | None, Query(ge=0, description="Until (Unix time); default now")]


def _span(since: float | None, until: float | None) -> tuple[float, float]:
    end = time.time() if until is None else until
    start = end - 86400 if since is None else since
    if start > end or end - start > MAX_SPAN_S:
        raise HTTPException(400, "since must be before until, at most 31 days apart")
    return start, end


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def export_router(sessions: sessionmaker[Session]) -> APIRouter:
    router = APIRouter(
        prefix="/api/export", tags=["export"],
        responses={**AUTH_RESPONSES, 400: {"description": "A bad time range"}},
        dependencies=[Depends(require_role(*READERS))],
    )  # fmt: skip

    def _sites(db: Session) -> dict[str, tuple[str, float | None, float | None]]:
        return {s.site_id: (s.name, s.lat, s.lon) for s in db.scalars(select(Site)).all()}

    @router.get("/counts.csv", response_class=Response)
    def counts_csv(
        since: Since = None, until: Until = None, site: SiteQ = "", device: DeviceQ = ""
    ) -> Response:
        start, end = _span(since, until)
        with sessions() as db:
            rows = ops_data.count_rows(db, start, end, site, device)
            names = {k: v[0] for k, v in _sites(db).items()}
        return Response(exports.counts_csv(rows, names), media_type="text/csv; charset=utf-8",
                        headers=_attachment("counts.csv"))  # fmt: skip

    @router.get("/counts.ngsi-ld.json", response_class=Response)
    def counts_ngsi_ld(
        since: Since = None, until: Until = None, site: SiteQ = "", device: DeviceQ = ""
    ) -> Response:
        start, end = _span(since, until)
        with sessions() as db:
            rows = ops_data.count_rows(db, start, end, site, device)
            entities, skipped = exports.traffic_flow_observed(rows, _sites(db))
        return Response(json.dumps(entities, ensure_ascii=False), media_type="application/ld+json",
                        headers={"X-Camfleet-Skipped": str(skipped)})  # fmt: skip

    @router.get("/events.csv", response_class=Response)
    def events_csv(
        site: SiteQ = "", device: DeviceQ = "",
        label: Annotated[str, Query(max_length=64)] = "",
        type: Annotated[str, Query(max_length=64)] = "",
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24,
    ) -> Response:  # fmt: skip
        f = ops_data.EventFilter(site, device, label, type, time.time() - hours * 3600)
        with sessions() as db:
            found, _total, where = ops_data.find_events(db, f, 0, 100_000)
            rows = [
                (e.event_id, e.ts, e.type, e.device_id, where.get(e.device_id, ""),
                 str((e.data or {}).get("label", "")) if isinstance(e.data, dict) else "",
                 isinstance((e.data or {}).get("jpeg"), str))
                for e in found
            ]  # fmt: skip
        return Response(exports.events_csv(rows), media_type="text/csv; charset=utf-8",
                        headers=_attachment("events.csv"))  # fmt: skip

    return router
