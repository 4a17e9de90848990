"""The operator's side of issue 15: quarantine a device, release it, and see who misbehaves
(``/api/quarantine``, ``/api/devices/{id}/quarantine``)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.config import ServerSettings
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.revocation import RevocationError, dynsec_call
from fleet_server.ingest.quarantine import Kick, Quarantine, dynsec_commands
from fleet_server.params import DeviceId

log = logging.getLogger(__name__)


def broker_kick(settings: ServerSettings, ca: CertificateAuthority) -> Kick | None:
    """Quarantine through the broker's dynamic-security plugin, when it is in use."""
    if not settings.identity.dynsec:
        return None

    def kick(device_id: str, quarantined: bool) -> bool:
        try:
            answers = dynsec_call(settings, ca, dynsec_commands(device_id, quarantined), 5.0)
        except RevocationError as exc:
            log.error("quarantine of %s not applied at the broker: %s", device_id, exc)
            return False
        last = "addClientRole" if quarantined else "removeClientRole"
        errors = [a.get("error") for a in answers if a.get("command") == last]
        if errors and errors[0]:
            log.error("quarantine of %s at the broker: %s", device_id, errors[0])
            return False
        return True

    return kick


class QuarantineRequest(BaseModel):
    reason: str = Field("quarantined by operator", max_length=256, description="Why")


class QuarantinedOut(BaseModel):
    device_id: str
    since: str = Field(description="When (UTC, ISO 8601)")
    by: str = Field(description="Who: a user, or 'system' for the flood rule")
    reason: str
    automatic: bool = Field(description="Put there by the flood rule (auto_quarantine)")


class MisbehaviourOut(BaseModel):
    quarantined: list[QuarantinedOut]
    flooding: dict[str, int] = Field(
        description="Devices flooding now (this process's ingest) -> messages dropped"
    )
    refused: dict[str, dict[str, int]] = Field(
        description="Refusals since the start (this process's ingest): device -> reason -> n"
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def guard_router(quarantine: Quarantine) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["devices"], responses=AUTH_RESPONSES)
    reader = Depends(require_role(*READERS))
    operator = Depends(require_role(OPERATOR))

    @router.get("/quarantine", response_model=MisbehaviourOut, dependencies=[reader])
    def misbehaving() -> MisbehaviourOut:
        """Quarantined devices, devices flooding now, refusals per device and reason."""
        stats: dict[str, Any] = quarantine.stats()
        rows = quarantine.listing()
        return MisbehaviourOut(
            quarantined=[
                QuarantinedOut(
                    device_id=r.device_id,
                    since=_iso(r.since),
                    by=r.by,
                    reason=r.reason,
                    automatic=r.automatic,
                )
                for r in rows
            ],
            flooding=stats.get("flooding", {}),
            refused=stats.get("refused", {}),
        )

    @router.post("/devices/{device_id}/quarantine")
    def put(device_id: DeviceId, req: QuarantineRequest, who: Actor = operator) -> dict[str, Any]:
        """Shut the device out (broker deny role; its certificate stays valid)."""
        kicked = quarantine.put(device_id, who, req.reason)
        return {"device_id": device_id, "quarantined": True, "disconnected": kicked}

    @router.delete(
        "/devices/{device_id}/quarantine", responses={404: {"description": "Not quarantined"}}
    )
    def release(device_id: DeviceId, who: Actor = operator) -> dict[str, Any]:
        """Let the device back in (on its next connect)."""
        if not quarantine.release(device_id, who):
            raise HTTPException(404, f"device {device_id} is not quarantined")
        return {"device_id": device_id, "quarantined": False}

    return router
