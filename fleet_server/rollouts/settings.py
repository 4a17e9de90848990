"""The ``[rollouts]`` section of the server config."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet_server.rollouts.plan import PlanError, zone


class RolloutSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tick_s: float = Field(
        1.0, gt=0, le=60, description="How often the rollout engine looks at open campaigns, s"
    )
    default_timezone: str = Field(
        "Europe/Rome",
        description="IANA time zone of maintenance windows for devices whose site has no "
        "time zone of its own, or that have no site",
    )
    repo_dir: Path | None = Field(
        None,
        description="TUF repository directory (docs/ota.md): a campaign's target must be a "
        "published target there with the campaign's artifact and release. None: not checked",
    )
    max_publish_per_tick: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Most update_desired messages (asks and clears) one campaign publishes "
        "per tick; the rest follow on the next ticks, so a big wave reaches the broker in "
        "steps",
    )
    max_devices: int = Field(100_000, ge=1, description="Most devices one campaign may target")

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            zone(name)
        except PlanError as exc:
            raise ValueError(str(exc)) from exc
        return name
