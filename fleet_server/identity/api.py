"""REST endpoints of identity: people, enrollment tokens, revocation, commissioning records,
the audit log; and the lifespan that runs the EST listener and the CRL keeper.

Mounted through ``fleet_server.features`` (one line). Every endpoint needs an API token
(``Authorization: Bearer``); the role each needs is in its ``require_role``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from fastapi import Path as PathParam
from prometheus_client import Counter
from pydantic import BaseModel, Field

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import (
    ADMIN,
    AUTH_RESPONSES,
    OPERATOR,
    TECHNICIAN,
    Authenticator,
    AuthError,
    require_role,
)
from fleet_server.identity.enrollment import EnrollError, Enrollment
from fleet_server.identity.est import EstListener, TLSHttpToolsProtocol, create_est_app
from fleet_server.identity.est_workers import EstWorkers, WorkerParams, requests_counter
from fleet_server.identity.model import Commissioning
from fleet_server.identity.revocation import CrlKeeper, Revoker, UnknownDevice
from fleet_server.params import DeviceId
from fleet_server.sites.records import ID_PATTERN, SiteRecordError, SiteRecords

if TYPE_CHECKING:
    from fleet_server.config import ServerSettings
    from fleet_server.features import ServerContext
    from fleet_server.identity.ca import CertificateAuthority
    from fleet_server.metrics import Metrics

log = logging.getLogger(__name__)


class TokenRequest(BaseModel):
    device_id: str = Field(pattern=ID_PATTERN, description="Device the token enrolls")
    kind: Literal["agent", "node"] = Field("agent", description="Linux box or node")
    site_id: str | None = Field(None, pattern=ID_PATTERN, description="Site it is for")
    ttl_s: int | None = Field(None, ge=60, le=30 * 86400, description="Lifetime, seconds")


class TokenOut(BaseModel):
    device_id: str
    token: str = Field(description="Shown once; only its hash is kept")
    expires_at: float
    replacement: bool = Field(
        False,
        description="The device has a valid certificate: enrolling with this token revokes "
        "its earlier certificates (operators only)",
    )


class UserRequest(BaseModel):
    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.-]+$", description="User name"
    )
    role: Literal["admin", "operator", "technician", "viewer"] = Field(
        description="What they may do"
    )


class RevokeRequest(BaseModel):
    reason: str = Field("revoked by operator", max_length=256, description="Why")


class RecordSubmission(BaseModel):
    record: dict[str, Any] = Field(description="The commissioning record (signed part)")
    signature: str = Field(max_length=512, description="Base64 signature by the device key")
    certificate: str = Field(max_length=8192, description="Device certificate, PEM")
    frame_b64: str | None = Field(None, description="Reference frame, base64")


def _record_out(row: Commissioning) -> dict[str, Any]:
    return {
        "record_id": row.record_id,
        "device_id": row.device_id,
        "site_id": row.site_id,
        "record": row.record,
        "certificate_serial": row.certificate_serial,
        "submitted_by": row.submitted_by,
        "received_at": row.received_at,
        "has_frame": row.reference_frame is not None,
    }


def identity_router(ctx: ServerContext) -> APIRouter:
    ident = ctx.settings.identity
    auth = Authenticator(ctx.sessions, ctx.settings.api.session_s)
    enrollment = Enrollment(ctx.sessions, ctx.ca, ident)
    revoker = Revoker(ctx.sessions, ctx.ca, ctx.settings)
    records = SiteRecords(ctx.sessions, ctx.ca, ident.max_frame_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.camfleet_auth = auth
        keeper = CrlKeeper(revoker, min(ident.crl_refresh_s, ident.crl_check_s))
        keeper.start()
        listener = est_listener(ctx.settings, ctx.ca, ctx.metrics, enrollment)
        if listener is not None:
            listener.start()
        try:
            yield
        finally:
            keeper.stopped.set()
            if listener is not None:
                listener.stop()

    router = APIRouter(
        prefix="/api", tags=["identity"], lifespan=lifespan, responses=AUTH_RESPONSES
    )
    technician = Depends(require_role(TECHNICIAN, OPERATOR))
    operator = Depends(require_role(OPERATOR))
    admin = Depends(require_role(ADMIN))

    @router.post(
        "/enrollment-tokens",
        status_code=201,
        response_model=TokenOut,
        responses={400: {"description": "Refused"}, 404: {"description": "Unknown device"},
                   403: {"description": "A replacement token needs an operator"},
                   409: {"description": "Revoked device"}},
    )  # fmt: skip
    def create_token(req: TokenRequest, who: Actor = technician) -> TokenOut:
        try:
            token, expires, replacement = enrollment.create_token_ex(
                req.device_id, req.kind, who, req.site_id, req.ttl_s
            )
        except EnrollError as exc:
            raise HTTPException(exc.status, f"{exc.reason}: {exc.detail}") from exc
        return TokenOut(
            device_id=req.device_id, token=token, expires_at=expires, replacement=replacement
        )

    @router.post("/devices/{device_id}/revoke", responses=_NOT_FOUND)
    def revoke(device_id: DeviceId, req: RevokeRequest, who: Actor = operator) -> dict[str, Any]:
        try:
            result = revoker.revoke(device_id, who, req.reason)
        except UnknownDevice as exc:
            raise HTTPException(404, f"no device {device_id}") from exc
        return {
            "device_id": device_id,
            "certificates_revoked": result.certificates,
            "already_revoked": result.already,
            "broker_reloaded": result.broker_reloaded,
            "disconnected": result.kicked,
        }

    @router.post("/users", status_code=201, responses={409: {"description": "Name taken"}})
    def create_user(req: UserRequest, who: Actor = admin) -> dict[str, str]:
        try:
            token = auth.create_user(req.name, req.role, who)
        except AuthError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"name": req.name, "role": req.role, "token": token}

    @router.post(
        "/commissioning", status_code=201, responses={400: {"description": "Record refused"}}
    )
    def submit_record(sub: RecordSubmission, who: Actor = technician) -> dict[str, Any]:
        try:
            record_id, stored = records.submit(
                sub.record, sub.signature, sub.certificate, sub.frame_b64, who
            )
        except SiteRecordError as exc:
            raise HTTPException(exc.status, f"{exc.reason}: {exc.detail}") from exc
        return {"record_id": record_id, "stored": stored, "verified": True}

    _read_routes(router, ctx, records, technician, operator)
    _session_routes(router, auth, admin)
    return router


def _session_routes(router: APIRouter, auth: Authenticator, admin: Any) -> None:
    @router.get("/sessions")
    def list_sessions(
        _who: Actor = admin, all: bool = False, limit: Annotated[int, Query(ge=1, le=5000)] = 500
    ) -> list[dict[str, Any]]:
        """Dashboard sessions, newest first: live ones (``all=true``: also ended ones)."""
        return [asdict(s) for s in auth.ui.list(not all, max(1, min(limit, 5000)))]

    @router.post("/sessions/{session_id}/revoke", responses=_NOT_FOUND)
    def revoke_session(
        session_id: Annotated[int, PathParam(ge=1, le=2**62)], who: Actor = admin
    ) -> dict[str, Any]:
        """End a dashboard session now (its cookie stops working at once)."""
        info = auth.ui.revoke(session_id, who)
        if info is None:
            raise HTTPException(404, f"no session {session_id}")
        return asdict(info)


def est_listener(
    settings: ServerSettings, ca: CertificateAuthority, metrics: Metrics, enrollment: Enrollment
) -> EstListener | EstWorkers | None:
    """The EST listener: worker processes sharing one socket, or a thread (est_workers 0).
    The identity router's lifespan starts it; ``run --role est`` runs it alone."""
    ident = settings.identity
    if ident.est_port is None:
        return None
    counter = requests_counter(metrics.registry)
    hosts = settings.broker.hosts
    if ident.est_workers == 0:
        app = create_est_app(ca, enrollment, lambda op, outcome: _inc(counter, op, outcome))
        return EstListener(
            app, ca, ident.est_host, ident.est_port, hosts, http=TLSHttpToolsProtocol
        )
    params = WorkerParams(
        settings.db_url(), str(settings.pki_dir), settings.log_level, ident.model_dump(mode="json")
    )
    return EstWorkers(params, ca, ident.est_host, ident.est_port, hosts, ident.est_workers, counter)


def _inc(counter: Counter, op: str, outcome: str) -> None:
    counter.labels(op=op, outcome=outcome).inc()


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Not found"}}


def _read_routes(
    router: APIRouter, ctx: ServerContext, records: SiteRecords, technician: Any, operator: Any
) -> None:
    @router.get("/devices/{device_id}/site", responses=_NOT_FOUND)
    def device_site(device_id: DeviceId, _who: Actor = technician) -> dict[str, Any]:
        row = records.latest_for_device(device_id)
        if row is None:
            raise HTTPException(404, f"no commissioning record for {device_id}")
        return _record_out(row)

    @router.get("/sites/{site_id}", responses=_NOT_FOUND)
    def site(
        site_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
        _who: Actor = technician,
    ) -> dict[str, Any]:
        found, rows = records.for_site(site_id)
        if found is None:
            raise HTTPException(404, f"no site {site_id}")
        return {
            "site_id": found.site_id,
            "name": found.name,
            "lat": found.lat,
            "lon": found.lon,
            "devices": sorted({r.device_id for r in rows}),
            "records": [_record_out(r) for r in rows],
        }

    @router.get("/devices/{device_id}/site/frame", responses=_NOT_FOUND)
    def device_frame(device_id: DeviceId, _who: Actor = technician) -> Response:
        row = records.latest_for_device(device_id)
        if row is None or row.reference_frame is None:
            raise HTTPException(404, f"no reference frame for {device_id}")
        ref = row.record.get("reference_frame") or {}
        return Response(row.reference_frame, media_type=str(ref.get("media_type", "image/png")))

    @router.get("/audit")
    def audit_log(
        _who: Actor = operator, limit: int = 100, action: str | None = None
    ) -> list[dict[str, Any]]:
        rows = audit.recent(ctx.sessions, max(1, min(limit, 1000)), action)
        return [
            {
                "at": r.at,
                "actor": r.actor,
                "role": r.role,
                "action": r.action,
                "target": r.target,
                "source": r.source,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            for r in rows
        ]
