"""Identity tables (migration 0003_identity): people and their API tokens, enrollment
tokens, issued certificates, revoked devices, sites, commissioning records, the audit log.

Secrets are never stored: tokens are kept as their SHA-256 (``fleet_server.identity.tokens``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db import Base


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UiSession(Base):
    """A person signed in to the dashboard (0011_people): the cookie carries a random id,
    only its SHA-256 is kept; it dies at ``expires_at``, on sign-out, when an admin revokes
    it, or with the API token it was opened with."""

    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sid_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_name: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_ui_sessions_user", "user_name"),)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    site_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_from: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # for a device that already had a valid certificate (0011_people): operator only, and
    # the enrollment that spends it revokes the device's earlier certificates
    replacement: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_enrollment_tokens_device", "device_id"),)


class IssuedCertificate(Base):
    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(48), primary_key=True)  # hex
    device_id: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[float] = mapped_column(Float)
    not_after: Mapped[float] = mapped_column(Float)
    issued_at: Mapped[float] = mapped_column(Float)
    via: Mapped[str] = mapped_column(String(16))  # enroll | reenroll
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # a renewal made a newer certificate (0011_people); revoked after the grace period
    superseded_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_certificates_device", "device_id"),)


class RevokedDevice(Base):
    __tablename__ = "revoked_devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_at: Mapped[float] = mapped_column(Float)
    revoked_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(256))


class Site(Base):
    __tablename__ = "sites"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class Commissioning(Base):
    __tablename__ = "commissioning"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str] = mapped_column(String(64), ForeignKey("sites.site_id"))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(Text)
    certificate_serial: Mapped[str] = mapped_column(String(48))
    reference_frame: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    submitted_by: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_commissioning_device", "device_id"),)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(80))  # user name, token:<device>, cert:<device>
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(64))  # client address
    outcome: Mapped[str] = mapped_column(String(32))  # ok | refused:<reason>
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_at", "at"),)
