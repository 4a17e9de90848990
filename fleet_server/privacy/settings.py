"""The ``[privacy]`` section of the server config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PrivacySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Days events and snapshots are kept, for sites without their own "
        "retention (and devices without a site)",
    )
    retention_every_s: float = Field(
        3600.0,
        ge=1,
        le=86400,
        description="How often the server deletes what is past its site's retention, s",
    )
    retention_batch: int = Field(
        5000, ge=10, le=1_000_000, description="Events deleted per transaction"
    )
    export_max_images: int = Field(
        100_000, ge=1, description="Most images one data-subject export may hold"
    )
