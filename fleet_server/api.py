"""REST API (FastAPI): the device registry, server metrics and liveness."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from fleet_server.access.auth import AUTH_RESPONSES, READERS, require_role
from fleet_server.access.headers import SecurityHeaders
from fleet_server.dashboard import mount_static
from fleet_server.db import Device
from fleet_server.ingest.registry import Registry
from fleet_server.inventory.api import TagText
from fleet_server.inventory.store import MAX_FILTER_TAGS
from fleet_server.metrics import Metrics
from fleet_server.params import DeviceId


class DeviceOut(BaseModel):
    id: str = Field(description="Device id (the CN of its certificate)")
    kind: str = Field(description="agent (Linux box) or node (microcontroller)")
    state: Literal["online", "offline", "unknown"] = Field(description="Connection state")
    state_reason: str | None = Field(description="Why the state last changed, when known")
    state_changed_at: str = Field(description="When the state last changed (UTC, ISO 8601)")
    first_seen: str = Field(description="First message from this device (UTC)")
    last_seen: str = Field(description="Last message from this device (UTC)")
    heartbeat_interval_s: float | None = Field(description="Interval the device announced")
    last_seq: int | None = Field(description="Sequence number of the last heartbeat")
    seq_gaps: int = Field(description="Heartbeats missing, summed over the device's life")
    versions: dict[str, Any] = Field(description="Software versions the device reported")
    last_heartbeat: dict[str, Any] | None = Field(description="Last heartbeat payload")
    hardware: dict[str, Any] | None = Field(
        None, description="Hardware inventory the device last reported (board, serial, ...)"
    )
    tags: list[str] = Field(default_factory=list, description="The device's tags, sorted")


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total: int = Field(description="Devices matching the filter")
    limit: int
    offset: int


def _iso(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts or 0.0, dt.UTC).isoformat()


def device_out(dev: Device, tags: Sequence[str] = ()) -> DeviceOut:
    return DeviceOut(
        id=dev.id,
        kind=dev.kind,
        state=dev.state,
        state_reason=dev.state_reason,
        state_changed_at=_iso(dev.state_changed_at),
        first_seen=_iso(dev.first_seen),
        last_seen=_iso(dev.last_seen),
        heartbeat_interval_s=dev.heartbeat_interval_s,
        last_seq=dev.last_seq,
        seq_gaps=dev.seq_gaps,
        versions=dev.versions or {},
        last_heartbeat=dev.last_heartbeat,
        hardware=dev.hardware,
        tags=list(tags),
    )


class _App(FastAPI):
    """FastAPI with the security headers outside its whole stack (also on 500 pages)."""

    img_src: Sequence[str] = ()

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), self.img_src)


def create_app(
    registry: Registry,
    metrics: Metrics,
    routers: Sequence[APIRouter] = (),
    health: Callable[[], str | None] = lambda: None,
    img_src: Sequence[str] = (),
) -> FastAPI:
    """``health``: why the process is unhealthy (``/healthz`` 503), or None; ``img_src``:
    more image sources for the Content-Security-Policy (a map's tile server)."""
    app = _App(
        title="camfleet fleet server",
        version="0.1.0",
        description="Registry and health of the camera fleet.",
        # Swagger UI and ReDoc load their assets from a CDN; nothing here does
        docs_url=None,
        redoc_url=None,
    )
    app.img_src = tuple(img_src)

    reader = [Depends(require_role(*READERS))]

    @app.get(
        "/api/devices",
        response_model=DevicePage,
        tags=["devices"],
        dependencies=reader,
        responses=AUTH_RESPONSES,
    )
    def list_devices(
        state: Annotated[
            Literal["online", "offline", "unknown"] | None, Query(description="Filter by state")
        ] = None,
        kind: Annotated[
            Literal["agent", "node"] | None, Query(description="Filter by device kind")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000, description="Skip this many")] = 0,
        tag: Annotated[
            list[TagText],
            Query(max_length=MAX_FILTER_TAGS, description="Only devices with all these tags"),
        ] = [],  # noqa: B006 (FastAPI copies defaults)
        hardware: Annotated[
            str | None,
            Query(min_length=1, max_length=64, description="Part of the board model"),
        ] = None,
    ) -> DevicePage:
        rows, total = registry.list_devices(state, kind, limit, offset, tag, hardware)
        tags = registry.tags_of([d.id for d in rows])
        return DevicePage(
            items=[device_out(d, tags[d.id]) for d in rows], total=total, limit=limit,
            offset=offset,
        )  # fmt: skip

    @app.get(
        "/api/devices/{device_id}",
        response_model=DeviceOut,
        responses={404: {"description": "No such device"}, **AUTH_RESPONSES},
        tags=["devices"],
        dependencies=reader,
    )
    def get_device(device_id: DeviceId) -> DeviceOut:
        dev = registry.get_device(device_id)
        if dev is None:
            raise HTTPException(status_code=404, detail=f"device {device_id} not found")
        return device_out(dev, registry.tags_of([dev.id])[dev.id])

    for router in routers:
        app.include_router(router)
    mount_static(app)

    @app.get(
        "/healthz",
        tags=["server"],
        responses={503: {"description": "Unhealthy: an ingest thread gave up, or the MQTT "
                         "link has been down longer than [ingest] healthz_link_down_s"}},
    )  # fmt: skip
    def healthz(response: Response) -> dict[str, str]:
        problem = health()
        if problem is not None:
            response.status_code = 503
            return {"status": "unhealthy", "problem": problem}
        return {"status": "ok"}

    @app.get("/metrics", tags=["server"], response_class=Response)
    def prometheus() -> Response:
        for state, n in registry.state_counts().items():
            metrics.devices.labels(state=state).set(n)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
