"""The REST bodies of rollouts: what the API accepts (checked here: types, ranges,
patterns) and what it answers, with the conversions from the campaign rows. The routes are
in ``fleet_server.rollouts.api``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy.orm import Session

from fleet_server.inventory.store import MAX_FILTER_TAGS, TAG_PATTERN
from fleet_server.params import DEVICE_ID_PATTERN
from fleet_server.rollouts import actions, plan, store
from fleet_server.rollouts.model import Campaign, CampaignDevice
from fleet_server.sites.records import ID_PATTERN

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
