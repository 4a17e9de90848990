"""Rollout tables (SQLAlchemy 2; the schema is migration 0008) and the state names.

A campaign holds one row per device it targets (``CampaignDevice``). ``RolloutClaim`` keeps
"one active campaign per device" in the database itself: its primary key is the device, so
two campaigns that overlap cannot both claim it, even when created at the same moment by two
server workers.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db import Base

# Campaign states
RUNNING = "running"
PAUSED = "paused"
HALTED = "halted"  # stopped by its failure threshold; cancel or roll back from here
CANCELLED = "cancelled"
FINISHED = "finished"
CAMPAIGN_STATES = (RUNNING, PAUSED, HALTED, CANCELLED, FINISHED)
ACTIVE_STATES = (RUNNING, PAUSED, HALTED)  # these hold their devices' claims

# Per-device states: the server's own "pending" and "skipped" around what devices report
PENDING = "pending"
DOWNLOADING = "downloading"
INSTALLING = "installing"
TRIAL = "trial"
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
SKIPPED = "skipped"
DEVICE_STATES = (PENDING, DOWNLOADING, INSTALLING, TRIAL, COMMITTED, ROLLED_BACK, FAILED, SKIPPED)
TERMINAL = (COMMITTED, ROLLED_BACK, FAILED, SKIPPED)
# How far along a device is: a report may only move it forward.
RANK = {PENDING: 0, DOWNLOADING: 1, INSTALLING: 2, TRIAL: 3,
        COMMITTED: 4, ROLLED_BACK: 4, FAILED: 4, SKIPPED: 4}  # fmt: skip


class Campaign(Base):
    __tablename__ = "rollout_campaigns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    artifact: Mapped[str] = mapped_column(String(16))
    release: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    allow_downgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    trial_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    filter: Mapped[dict[str, Any]] = mapped_column(JSON)
    # [{"count": n | None, "percent": p | None, "success": s | None, "failure": f | None}]
    waves: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # cumulative number of devices reached at the end of each wave
    wave_ends: Mapped[list[int]] = mapped_column(JSON)
    success_threshold: Mapped[float] = mapped_column(Float)
    failure_threshold: Mapped[float] = mapped_column(Float)
    soak_s: Mapped[float] = mapped_column(Float)
    rate_per_min: Mapped[int] = mapped_column(Integer)
    windows: Mapped[list[str]] = mapped_column(JSON)
    device_deadline_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), index=True)
    wave: Mapped[int] = mapped_column(Integer, default=0)  # index of the current wave
    reason: Mapped[str | None] = mapped_column(String(512), nullable=True)
    rollback_of: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)
    # the campaign's last device left a non-terminal state (no more ticking needed)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # update_state messages of this campaign that were ignored (stale, backwards, unknown)
    ignored_reports: Mapped[int] = mapped_column(Integer, default=0)


class CampaignDevice(Base):
    __tablename__ = "rollout_devices"

    campaign_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("rollout_campaigns.id"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # order in the campaign's plan
    state: Mapped[str] = mapped_column(String(16))
    from_release: Mapped[str | None] = mapped_column(String(64), nullable=True)
    asked_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # desired published
    state_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    committed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # post-commit health: None while soaking (or not committed), True healthy, False not
    healthy: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    cleared: Mapped[bool] = mapped_column(Boolean, default=False)  # desired cleared again

    __table_args__ = (
        Index("ix_rollout_devices_device", "device_id"),
        Index("ix_rollout_devices_state", "campaign_id", "state"),
    )


class RolloutClaim(Base):
    __tablename__ = "rollout_claims"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(40), index=True)
