"""REST routes of rollouts: campaigns (create with dry run, list, get, devices, pause,
resume, cancel, roll back), a site's time zone and a device's update state. The bodies
they take and answer are in ``fleet_server.rollouts.schemas``.

Operators and admins change things, every reader may look. Each change and each refusal
goes to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.commands.store import Outgoing
from fleet_server.config import ServerSettings
from fleet_server.dashboard.views import ExtraPage
from fleet_server.db import page
from fleet_server.ota.settings import repo_dir_of
from fleet_server.params import DeviceId
from fleet_server.rollouts import actions, store
from fleet_server.rollouts.model import Campaign
from fleet_server.rollouts.pages import rollout_pages_router
from fleet_server.rollouts.schemas import (
    CampaignIn,
    CampaignOut,
    CampaignPage,
    CampaignState,
    CreatedOut,
    DeviceState,
    DeviceStateOut,
    DeviceStatePage,
    PlanOut,
    RollbackIn,
    RollbackOut,
    TimezoneIn,
    campaign_out,
    device_state_out,
)
from fleet_server.rollouts.settings import RolloutSettings
from fleet_server.sites.records import ID_PATTERN

Operator = Annotated[Actor, Depends(require_role(OPERATOR))]
CampaignId = Annotated[
    str, Path(min_length=3, max_length=40, pattern=r"^[a-z0-9-]+$", description="Campaign id")
]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such campaign"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The campaign's state does not allow it, or devices are taken"}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "Bad input: window, wave, thresholds, unknown release, no devices"}
}


def rollouts_router(
    sessions: sessionmaker[Session], send: Callable[[Outgoing], None], settings: RolloutSettings,
    repo_dir: FilePath | None = None,
) -> APIRouter:  # fmt: skip
    """``repo_dir``: the TUF repository releases are checked against (None: not checked)."""
    router = APIRouter(
        tags=["rollouts"], dependencies=[Depends(require_role(*READERS))],
        responses=AUTH_RESPONSES,
    )  # fmt: skip
    check = actions.repo_check(repo_dir) if repo_dir is not None else None

    def refused(who: Actor, action: str, target: str, exc: store.RolloutError) -> HTTPException:
        audit.record_now(sessions, who, action, target, f"refused:{exc.status}",
                         {"why": str(exc)[:300]})  # fmt: skip
        return HTTPException(exc.status, str(exc))

    @router.post(
        "/api/rollouts", response_model=CreatedOut, status_code=201,
        responses={200: {"description": "Dry run: the plan only"}, **_CONFLICT, **_INVALID},
    )  # fmt: skip
    def create(body: CampaignIn, who: Operator, response: Response) -> CreatedOut:
        spec = body.spec()
        try:
            if check is not None:
                check(spec.artifact, spec.release, spec.target)
            with sessions.begin() as db:
                camp, planned = store.create(
                    db,
                    spec,
                    who.name,
                    time.time(),
                    limit=settings.max_devices,
                    dry_run=body.dry_run,
                )
                plan_out = PlanOut(total=len(planned.devices), wave_sizes=planned.wave_sizes(),
                                   devices=planned.devices[:1000])  # fmt: skip
                if camp is None:
                    response.status_code = 200
                    return CreatedOut(campaign=None, plan=plan_out)
                audit.record(db, who, "rollout.create", camp.id, "ok",
                             {"release": spec.release, "artifact": spec.artifact,
                              "devices": len(planned.devices)})  # fmt: skip
                return CreatedOut(campaign=campaign_out(db, camp), plan=plan_out)
        except store.RolloutError as exc:
            raise refused(who, "rollout.create", spec.name, exc) from exc

    @router.get("/api/rollouts", response_model=CampaignPage)
    def list_campaigns(
        state: Annotated[CampaignState | None, Query(description="Only in this state")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> CampaignPage:
        with sessions() as db:
            query = select(Campaign)
            if state:
                query = query.where(Campaign.state == state)
            rows, total = page(db, query, limit, offset, Campaign.created_at.desc())
            return CampaignPage(total=total, campaigns=[campaign_out(db, c) for c in rows])

    @router.get("/api/rollouts/{cid}", response_model=CampaignOut, responses=_NOT_FOUND)
    def get_campaign(cid: CampaignId) -> CampaignOut:
        with sessions() as db:
            camp = db.get(Campaign, cid)
            if camp is None:
                raise HTTPException(404, f"campaign {cid} not found")
            return campaign_out(db, camp)

    @router.get("/api/rollouts/{cid}/devices", response_model=DeviceStatePage,
                responses=_NOT_FOUND)  # fmt: skip
    def campaign_devices(
        cid: CampaignId,
        state: Annotated[DeviceState | None, Query(description="Only in this state")] = None,
        wave: Annotated[int | None, Query(ge=1, le=20, description="Only this wave")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> DeviceStatePage:
        with sessions() as db:
            if db.get(Campaign, cid) is None:
                raise HTTPException(404, f"campaign {cid} not found")
            rows, total = actions.device_rows(
                db, cid, state, None if wave is None else wave - 1, limit, offset
            )
            return DeviceStatePage(total=total, devices=[device_state_out(r) for r in rows])

    _change_routes(router, sessions, send, settings, check, refused)
    return router


Refuse = Callable[[Actor, str, str, store.RolloutError], HTTPException]


def _change_routes(
    router: APIRouter, sessions: sessionmaker[Session], send: Callable[[Outgoing], None],
    settings: RolloutSettings, check: actions.ReleaseCheck | None, refused: Refuse,
) -> None:  # fmt: skip
    """Pause, resume, cancel, roll back; a site's time zone; a device's update state."""

    def _action(name: str, run: Callable[[Session, str, float], tuple[Campaign, list[Outgoing]]]
                ) -> Callable[[str, Actor], CampaignOut]:  # fmt: skip
        def act(cid: CampaignId, who: Operator) -> CampaignOut:
            try:
                with sessions.begin() as db:
                    camp, out = run(db, cid, time.time())
                    audit.record(db, who, f"rollout.{name}", cid, "ok")
                    result = campaign_out(db, camp)
            except store.RolloutError as exc:
                raise refused(who, f"rollout.{name}", cid, exc) from exc
            for o in out:
                send(o)
            return result

        return act

    for name, run in (
        ("pause", lambda db, cid, now: (actions.pause(db, cid, now), [])),
        ("resume", lambda db, cid, now: (actions.resume(db, cid, now), [])),
        ("cancel", actions.cancel),
    ):
        router.add_api_route(
            f"/api/rollouts/{{cid}}/{name}", _action(name, run), methods=["POST"],
            response_model=CampaignOut, responses={**_NOT_FOUND, **_CONFLICT},
            name=f"rollout_{name}",
        )  # fmt: skip

    @router.post("/api/rollouts/{cid}/rollback", response_model=RollbackOut, status_code=201,
                 responses={**_NOT_FOUND, **_CONFLICT, **_INVALID})  # fmt: skip
    def rollback(cid: CampaignId, body: RollbackIn, who: Operator) -> RollbackOut:
        overrides: dict[str, Any] = {}
        if body.rate_per_min is not None:
            overrides["rate_per_min"] = body.rate_per_min
        if body.windows is not None:
            overrides["windows"] = tuple(body.windows)
        if body.soak_s is not None:
            overrides["soak_s"] = body.soak_s
        waves = tuple(w.spec() for w in body.waves) if body.waves else None
        try:
            with sessions.begin() as db:
                done, out = actions.rollback(
                    db, cid, who.name, time.time(), limit=settings.max_devices, check=check,
                    waves=waves, overrides=overrides,
                )  # fmt: skip
                for camp in done.created:
                    audit.record(db, who, "rollout.rollback", camp.id, "ok",
                                 {"of": cid, "release": camp.release})  # fmt: skip
                result = RollbackOut(campaigns=[campaign_out(db, c) for c in done.created],
                                     left_out=done.left_out)  # fmt: skip
        except store.RolloutError as exc:
            raise refused(who, "rollout.rollback", cid, exc) from exc
        for o in out:
            send(o)
        return result

    @router.put("/api/sites/{site_id}/timezone", status_code=204,
                responses={404: {"description": "No such site"}, **_INVALID})  # fmt: skip
    def site_timezone(
        site_id: Annotated[str, Path(pattern=ID_PATTERN)], body: TimezoneIn, who: Operator
    ) -> None:
        try:
            with sessions.begin() as db:
                store.set_site_timezone(db, site_id, body.timezone)
                audit.record(db, who, "site.timezone", site_id, "ok", {"tz": body.timezone})
        except store.RolloutError as exc:
            raise refused(who, "site.timezone", site_id, exc) from exc

    @router.get("/api/devices/{device_id}/update", response_model=DeviceStateOut,
                responses={404: {"description": "The device was in no campaign"}})  # fmt: skip
    def device_update(device_id: DeviceId) -> DeviceStateOut:
        with sessions() as db:
            found = actions.latest_for_device(db, device_id)
            if found is None:
                raise HTTPException(404, f"{device_id} was in no campaign")
            return device_state_out(found[1])


def rollouts_routes(
    sessions: sessionmaker[Session], send: Callable[[Outgoing], None], settings: ServerSettings,
    pages: Sequence[ExtraPage],
) -> APIRouter:  # fmt: skip
    """The REST routes and the campaign page, for ``fleet_server.features``. Releases are
    checked against ``[rollouts] repo_dir``, else the repository the server serves when
    ``[ota] enabled``, else not at all."""
    repo_dir = settings.rollouts.repo_dir
    if repo_dir is None and settings.ota.enabled:
        repo_dir = repo_dir_of(settings.ota, settings.data_dir)
    router = APIRouter()
    router.include_router(rollouts_router(sessions, send, settings.rollouts, repo_dir))
    router.include_router(rollout_pages_router(sessions, pages, settings.dashboard))
    return router
