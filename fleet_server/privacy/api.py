"""The privacy API: a site's snapshot policy (``full`` only with the legal basis of the
decision, audited), a camera's masks and their confirmation after a move, refused-image
counts. Every change is audited in its transaction and re-sends the desired config of the
cameras concerned."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from common import privacy
from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.commands.store import Outgoing
from fleet_server.params import DeviceId
from fleet_server.privacy import store
from fleet_server.privacy.model import CameraMasks
from fleet_server.privacy.settings import PrivacySettings
from fleet_server.sites.records import ID_PATTERN

Operator = Annotated[Actor, Depends(require_role(OPERATOR))]
Reader = Annotated[Actor, Depends(require_role(*READERS))]
SiteId = Annotated[str, Path(pattern=ID_PATTERN, description="Site id")]
_BAD: dict[int | str, dict[str, Any]] = {
    400: {"description": "Refused: the reason says what and how many"}
}


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = Field(description="none | anonymised | full")
    legal_basis: str | None = Field(
        None, max_length=store.LEGAL_BASIS_MAX,
        description="Required for full: the law and the decision that allow full images",
    )  # fmt: skip
    retention_days: int | None = Field(
        None, ge=1, le=3650, description="Days events and snapshots are kept; none: default"
    )


class RefusalOut(BaseModel):
    device_id: str
    reason: str
    count: int
    last_at: str


class SitePrivacyOut(BaseModel):
    site_id: str
    policy: str = Field(description="none | anonymised | full")
    version: int = Field(description="Raised at every change; 0: never set (the default)")
    legal_basis: str | None
    decided_by: str | None
    decided_at: str | None
    retention_days: int = Field(description="Days kept (the site's, or the server default)")
    devices: list[str] = Field(description="Devices at the site now")
    refused: list[RefusalOut] = Field(description="Images the server refused, per reason")


class MasksIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    masks: dict[str, Any] = Field(
        description='{"privacy": [polygon, ...], "motion": [polygon, ...]}, a polygon a '
        "list of [x, y] corners as fractions of the frame"
    )


class MasksOut(BaseModel):
    device_id: str
    version: int
    masks: dict[str, Any]
    digest: str = Field(description="SHA-256 of the masks' canonical JSON")
    source: str
    updated_by: str
    updated_at: str
    stale: bool = Field(description="The view moved: no image is accepted until confirmed")
    stale_since: str | None
    confirmed_by: str | None
    confirmed_at: str | None


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def masks_out(row: CameraMasks) -> MasksOut:
    return MasksOut(
        device_id=row.device_id, version=row.version, masks=row.masks, digest=row.digest,
        source=row.source, updated_by=row.updated_by, updated_at=_iso(row.updated_at) or "",
        stale=row.stale, stale_since=_iso(row.stale_since), confirmed_by=row.confirmed_by,
        confirmed_at=_iso(row.confirmed_at),
    )  # fmt: skip


def site_out(db: Session, site_id: str, settings: PrivacySettings) -> SitePrivacyOut:
    view = store.site_view(db, site_id)
    devices = store.devices_at(db, site_id)
    refused = [
        RefusalOut(device_id=r.device_id, reason=r.reason, count=r.count,
                   last_at=_iso(r.last_at) or "")
        for r in store.refusals(db, devices)
    ]  # fmt: skip
    return SitePrivacyOut(
        site_id=site_id, policy=view.policy, version=view.version,
        legal_basis=view.legal_basis, decided_by=view.decided_by,
        decided_at=_iso(view.decided_at),
        retention_days=view.retention_days or settings.retention_days,
        devices=devices, refused=refused,
    )  # fmt: skip


def _refused(sessions: sessionmaker[Session], who: Actor, action: str, target: str,
             exc: store.PrivacyError | privacy.MaskError) -> HTTPException:  # fmt: skip
    detail = exc.detail if isinstance(exc, store.PrivacyError) else str(exc)
    status = exc.status if isinstance(exc, store.PrivacyError) else 400
    audit.record_now(sessions, who, action, target, "refused:invalid", {"why": detail[:300]})
    return HTTPException(status_code=status, detail=detail)


def privacy_router(
    sessions: sessionmaker[Session], send: Callable[[Outgoing], None], settings: PrivacySettings
) -> APIRouter:
    router = APIRouter(tags=["privacy"], responses=AUTH_RESPONSES)

    @router.get("/api/sites/{site_id}/privacy", response_model=SitePrivacyOut)
    def get_site(site_id: SiteId, _who: Reader) -> SitePrivacyOut:
        with sessions() as db:
            return site_out(db, site_id, settings)

    @router.put("/api/sites/{site_id}/privacy", response_model=SitePrivacyOut, responses=_BAD)
    def put_site(site_id: SiteId, body: PolicyIn, who: Operator) -> SitePrivacyOut:
        now = time.time()
        try:
            with sessions.begin() as db:
                row = store.set_policy(db, site_id, body.policy, body.legal_basis,
                                       body.retention_days, who.name, now)  # fmt: skip
                detail = {"policy": row.policy, "version": row.version,
                          "retention_days": row.retention_days,
                          "legal_basis": row.legal_basis}  # fmt: skip
                audit.record(db, who, "privacy.policy", site_id, "ok", detail)
                out = store.push(db, store.devices_at(db, site_id), who.name, now)
                result = site_out(db, site_id, settings)
        except store.PrivacyError as exc:
            raise _refused(sessions, who, "privacy.policy", site_id, exc) from exc
        for msg in out:
            send(msg)
        return result

    @router.get("/api/devices/{device_id}/masks", response_model=MasksOut,
                responses={404: {"description": "No masks for this camera"}})  # fmt: skip
    def get_masks(device_id: DeviceId, _who: Reader) -> MasksOut:
        with sessions() as db:
            row = db.get(CameraMasks, device_id)
            if row is None:
                raise HTTPException(404, f"no masks for {device_id}")
            return masks_out(row)

    @router.put("/api/devices/{device_id}/masks", response_model=MasksOut, responses=_BAD)
    def put_masks(device_id: DeviceId, body: MasksIn, who: Operator) -> MasksOut:
        now = time.time()
        try:
            masks = privacy.check_masks(body.masks)
            with sessions.begin() as db:
                row = store.set_masks(db, device_id, masks, "dashboard", who.name, now)
                audit.record(db, who, "privacy.masks", device_id, "ok", _mask_detail(row))
                out = store.push(db, [device_id], who.name, now)
                result = masks_out(row)
        except (store.PrivacyError, privacy.MaskError) as exc:
            raise _refused(sessions, who, "privacy.masks", device_id, exc) from exc
        for msg in out:
            send(msg)
        return result

    @router.post("/api/devices/{device_id}/masks/confirm", response_model=MasksOut,
                 responses={404: {"description": "No masks for this camera"}})  # fmt: skip
    def confirm(device_id: DeviceId, who: Operator) -> MasksOut:
        now = time.time()
        try:
            with sessions.begin() as db:
                row = store.confirm(db, device_id, who.name, now)
                audit.record(db, who, "privacy.confirm", device_id, "ok", _mask_detail(row))
                out = store.push(db, [device_id], who.name, now)
                result = masks_out(row)
        except store.PrivacyError as exc:
            raise _refused(sessions, who, "privacy.confirm", device_id, exc) from exc
        for msg in out:
            send(msg)
        return result

    @router.get("/api/privacy/refusals", response_model=list[RefusalOut])
    def refusals(_who: Reader) -> list[RefusalOut]:
        with sessions() as db:
            return [
                RefusalOut(device_id=r.device_id, reason=r.reason, count=r.count,
                           last_at=_iso(r.last_at) or "")
                for r in store.refusals(db)
            ]  # fmt: skip

    return router


def _mask_detail(row: CameraMasks) -> dict[str, Any]:
    return {
        "version": row.version,
        "digest": row.digest,
        "privacy": len(row.masks.get(privacy.PRIVACY, [])),
        "motion": len(row.masks.get(privacy.MOTION, [])),
    }
