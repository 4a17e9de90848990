"""REST routes of rollouts: campaigns (create with dry run, list, get, devices, pause,
resume, cancel, roll back), a site's time zone and a device's update state.

Operators and admins change things, every reader may look. Each change and each refusal
goes to the audit log.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.commands.store import Outgoing
from fleet_server.config import ServerSettings
from fleet_server.dashboard.views import ExtraPage
from fleet_server.db import page
from fleet_server.inventory.store import MAX_FILTER_TAGS, TAG_PATTERN
from fleet_server.ota.settings import repo_dir_of
from fleet_server.params import DEVICE_ID_PATTERN, DeviceId
from fleet_server.rollouts import actions, plan, store
from fleet_server.rollouts.model import Campaign, CampaignDevice
from fleet_server.rollouts.pages import rollout_pages_router
from fleet_server.rollouts.settings import RolloutSettings
from fleet_server.sites.records import ID_PATTERN

Operator = Annotated[Actor, Depends(require_role(OPERATOR))]
CampaignId = Annotated[
    str, Path(min_length=3, max_length=40, pattern=r"^[a-z0-9-]+$", description="Campaign id")
]
TagText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TAG_PATTERN)]
SiteText = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DeviceText = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
ReleaseText = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
]
WindowText = Annotated[str, StringConstraints(pattern=r"^\d\d:\d\d-\d\d:\d\d$")]
DeviceState = Literal[
    "pending", "downloading", "installing", "trial", "committed", "rolled_back", "failed",
    "skipped",
]  # fmt: skip
CampaignState = Literal["running", "paused", "halted", "cancelled", "finished"]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such campaign"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The campaign's state does not allow it, or devices are taken"}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "Bad input: window, wave, thresholds, unknown release, no devices"}
}


class WaveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int | None = Field(
        None, ge=1, le=1_000_000, description="Devices reached by the end of this wave (in total)"
    )
    percent: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Share of the campaign's devices reached by the "
        "end of this wave (in total, rounded up)",
    )
    success_threshold: float | None = Field(
        None, ge=0, le=1, description="This wave's share that must be healthy (else the "
        "campaign's)")  # fmt: skip
    failure_threshold: float | None = Field(
        None, ge=0, le=1, description="This wave's share of failures that halts (else the "
        "campaign's)")  # fmt: skip

    @model_validator(mode="after")
    def _one_size(self) -> WaveIn:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a wave gives either count or percent")
        return self

    def spec(self) -> plan.WaveSpec:
        return plan.WaveSpec(self.count, self.percent, self.success_threshold,
                             self.failure_threshold)  # fmt: skip


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[TagText] = Field(default_factory=list, max_length=MAX_FILTER_TAGS,
                                description="Devices with all of these tags")  # fmt: skip
    sites: list[SiteText] = Field(default_factory=list, max_length=1000,
                                  description="Devices at any of these sites")  # fmt: skip
    hardware: str | None = Field(
        None, min_length=1, max_length=64, description="Part of the board model (case-insensitive)"
    )
    kind: Literal["agent", "node"] | None = Field(None, description="Device kind")
    current: list[ReleaseText] = Field(
        default_factory=list, max_length=50,
        description="Devices whose running version of the artifact is one of these")  # fmt: skip
    device_ids: list[DeviceText] = Field(default_factory=list, max_length=100_000,
                                         description="Only these devices")  # fmt: skip

    def spec(self) -> store.Filter:
        return store.Filter(tuple(self.tags), tuple(self.sites), self.hardware, self.kind,
                            tuple(self.current), tuple(self.device_ids))  # fmt: skip


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="What operators call it")
    artifact: Literal["agent", "model", "firmware"] = Field(description="What it installs")
    release: ReleaseText = Field(description="The release to install")
    target: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9._+/-]+$",
        description="TUF target path of the release's full bundle",
    )
    filter: FilterIn = Field(default_factory=FilterIn, description="Which devices")
    waves: list[WaveIn] = Field(
        min_length=1, max_length=20, description="Canary first, then growing shares"
    )
    success_threshold: float = Field(0.95, ge=0, le=1,
                                     description="Share of a wave healthy after the soak for "
                                     "the next wave to start")  # fmt: skip
    failure_threshold: float = Field(0.05, ge=0, le=1,
                                     description="Share of a wave failed, rolled back or "
                                     "unhealthy above which the campaign halts")  # fmt: skip
    soak_s: float = Field(
        300.0, ge=0, le=7 * 86400, description="Seconds a committed device must stay healthy"
    )
    rate_per_min: int = Field(60, ge=1, le=1_000_000, description="Most devices asked per minute")
    windows: list[WindowText] = Field(default_factory=list, max_length=12,
                                      description="Maintenance windows HH:MM-HH:MM in each "
                                      "site's local time; none: any time")  # fmt: skip
    device_deadline_s: float = Field(3600.0, ge=10, le=7 * 86400,
                                     description="A device without a result this long after "
                                     "it was asked counts as failed")  # fmt: skip
    allow_downgrade: bool = Field(False, description="An older release may install")
    trial_s: float | None = Field(
        None, ge=1, le=86400, description="Seconds the release has to prove healthy"
    )
    dry_run: bool = Field(False, description="Only answer which devices and waves")

    def spec(self) -> store.Spec:
        return store.Spec(
            name=self.name, artifact=self.artifact, release=self.release, target=self.target,
            filter=self.filter.spec(), waves=tuple(w.spec() for w in self.waves),
            success_threshold=self.success_threshold,
            failure_threshold=self.failure_threshold, soak_s=self.soak_s,
            rate_per_min=self.rate_per_min, windows=tuple(self.windows),
            device_deadline_s=self.device_deadline_s, allow_downgrade=self.allow_downgrade,
            trial_s=self.trial_s,
        )  # fmt: skip


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    waves: list[WaveIn] | None = Field(
        None, min_length=1, max_length=20, description="Default: everyone in one wave"
    )
    rate_per_min: int | None = Field(None, ge=1, le=1_000_000, description="Default: the same")
    windows: list[WindowText] | None = Field(
        None, max_length=12, description="Default: the same windows"
    )
    soak_s: float | None = Field(None, ge=0, le=7 * 86400, description="Default: the same")


class WaveOut(BaseModel):
    wave: int = Field(description="1 is the first (the canary)")
    size: int
    counts: dict[str, int] = Field(description="Devices per state, and healthy/unhealthy")


class CampaignOut(BaseModel):
    id: str
    name: str
    artifact: str
    release: str
    target: str
    allow_downgrade: bool
    trial_s: float | None
    filter: dict[str, Any]
    state: CampaignState
    reason: str | None
    wave: int = Field(description="The current wave, 1-based")
    waves: list[WaveOut]
    counts: dict[str, int]
    total: int
    success_threshold: float
    failure_threshold: float
    soak_s: float
    rate_per_min: int
    windows: list[str]
    device_deadline_s: float
    rollback_of: str | None
    ignored_reports: int
    created_at: str
    created_by: str
    updated_at: str
    closed_at: str | None


class PlanOut(BaseModel):
    total: int = Field(description="Devices the filter selects")
    wave_sizes: list[int]
    devices: list[str] = Field(description="In the order they are reached (first 1000)")


class CreatedOut(BaseModel):
    campaign: CampaignOut | None = Field(description="None for a dry run")
    plan: PlanOut


class CampaignPage(BaseModel):
    total: int
    campaigns: list[CampaignOut]


class DeviceStateOut(BaseModel):
    campaign_id: str
    device_id: str
    wave: int
    state: DeviceState
    from_release: str | None
    asked_at: str | None
    state_at: str | None
    committed_at: str | None
    healthy: bool | None
    progress: float | None
    attempt: int | None
    error: str | None


class DeviceStatePage(BaseModel):
    total: int
    devices: list[DeviceStateOut]


class RollbackOut(BaseModel):
    campaigns: list[CampaignOut]
    left_out: list[str] = Field(description="Committed devices without a known previous release")


class TimezoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str | None = Field(max_length=64, description="IANA zone; None: the default")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def campaign_out(db: Session, c: Campaign) -> CampaignOut:
    total, per_wave = actions.counts(db, c.id)
    sizes = plan.wave_sizes(c.wave_ends)
    waves = [
        WaveOut(wave=i + 1, size=size, counts=per_wave[i] if i < len(per_wave) else {})
        for i, size in enumerate(sizes)
    ]
    return CampaignOut(
        id=c.id, name=c.name, artifact=c.artifact, release=c.release, target=c.target,
        allow_downgrade=c.allow_downgrade, trial_s=c.trial_s, filter=c.filter,
        state=c.state,
        reason=c.reason, wave=min(c.wave, len(sizes) - 1) + 1, waves=waves, counts=total,
        total=sum(total.values()), success_threshold=c.success_threshold,
        failure_threshold=c.failure_threshold, soak_s=c.soak_s, rate_per_min=c.rate_per_min,
        windows=c.windows, device_deadline_s=c.device_deadline_s, rollback_of=c.rollback_of,
        ignored_reports=c.ignored_reports, created_at=_iso(c.created_at) or "",
        created_by=c.created_by, updated_at=_iso(c.updated_at) or "",
        closed_at=_iso(c.closed_at),
    )  # fmt: skip


def device_state_out(r: CampaignDevice) -> DeviceStateOut:
    return DeviceStateOut(
        campaign_id=r.campaign_id, device_id=r.device_id, wave=r.wave + 1,
        state=r.state,
        from_release=r.from_release, asked_at=_iso(r.asked_at), state_at=_iso(r.state_at),
        committed_at=_iso(r.committed_at), healthy=r.healthy, progress=r.progress,
        attempt=r.attempt, error=r.error,
    )  # fmt: skip


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
    router.include_router(rollout_pages_router(sessions, pages))
    return router
