"""Settings of certificates, enrollment and revocation (``[identity]`` in server.toml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class IdentitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    est_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTPS port of the EST enrollment listener (RFC 7030); unset = no listener",
    )
    est_host: str = Field("127.0.0.1", description="Address the EST listener binds to")
    est_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="Processes serving the EST listener (one socket, shared); about one per "
        "core for a fleet re-enrolling at once. 0 = a thread of the server process",
    )
    cert_days: float = Field(
        30.0, gt=0, le=825, description="Lifetime of device certificates, days"
    )
    token_ttl_s: int = Field(
        72 * 3600,
        ge=60,
        le=30 * 86400,
        description="Default lifetime of an enrollment token, seconds",
    )
    max_csr_bytes: int = Field(
        16 * 1024, ge=512, le=1 << 20, description="Largest enrollment request body, bytes"
    )
    allow_ed25519: bool = Field(
        False, description="Accept Ed25519 device keys (only where the broker takes them)"
    )
    crl_days: float = Field(
        7.0, gt=0, le=90, description="Validity of each CRL the server writes, days"
    )
    crl_refresh_s: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="How often the CRL is checked; it is rewritten when less than half of "
        "its validity is left (an expired CRL makes Mosquitto refuse every client)",
    )
    supersede_grace_s: float = Field(
        3600.0,
        ge=0,
        le=30 * 86400,
        description="A renewal supersedes the device's earlier certificates; they go on the "
        "CRL this long after it (time for the device to reconnect with the new one)",
    )
    crl_check_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often the server brings the CRL in line with the database "
        "(superseded certificates past their grace, certificates revoked by a replacement "
        "enrollment in an EST worker)",
    )
    broker_pid_file: Path | None = Field(
        None,
        description="File holding the broker's pid, for SIGHUP after a CRL change; "
        "default data_dir/broker/mosquitto.pid",
    )
    dynsec: bool = Field(
        True,
        description="Cut a revoked device off at once through Mosquitto's dynamic-security "
        "plugin (a deny-all role kicks its live session)",
    )
    max_frame_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest reference frame in a commissioning record, bytes",
    )
