"""Settings of the operators' dashboard (``[dashboard]``): language, time zone, refresh, map."""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DashboardSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Literal["vi", "en"] = Field(
        "vi", description="Language of the pages until a person picks another (vi, en)"
    )
    timezone: str = Field("Asia/Ho_Chi_Minh", description="IANA time zone the pages show times in")
    refresh_s: float = Field(
        15.0, ge=2, le=600, description="How often open pages update themselves, seconds"
    )
    cert_warn_days: float = Field(
        30.0, ge=0, le=365, description="Certificates expiring within this show as problems"
    )
    tiles_url: str = Field(
        "",
        max_length=512,
        pattern=r"^(|https?://[^\s\"'<>]+)$",
        description="Map tile server, e.g. https://tiles.example.vn/{z}/{x}/{y}.png (the "
        "province's own); empty: the plain projected map with a scale, offline",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value
