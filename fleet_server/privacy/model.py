"""Privacy tables (migration 0014_privacy)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db import Base


class SitePrivacy(Base):
    """A site's snapshot policy (absent: the default, anonymised) and retention."""

    __tablename__ = "site_privacy"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)  # +1 at every change
    legal_basis: Mapped[str | None] = mapped_column(Text, nullable=True)  # required for full
    decided_by: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[float] = mapped_column(Float)
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: default


class CameraMasks(Base):
    """A camera's masks, versioned; ``stale`` once its view moved, until confirmed."""

    __tablename__ = "camera_masks"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    masks: Mapped[dict[str, Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128))  # commissioning:<record id> | dashboard
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    stale_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    confirmed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    confirmed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PrivacyRefusal(Base):
    """Images the server refused, counted per device and reason."""

    __tablename__ = "privacy_refusals"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    count: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[float] = mapped_column(Float)
