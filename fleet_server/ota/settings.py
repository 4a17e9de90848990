"""Settings of the OTA release repository and its serving (``[ota]`` in server.toml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class OtaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Serve the TUF repository under /ota/ and keep its timestamp fresh"
    )
    repo_dir: Path | None = Field(
        None, description="TUF repository directory (metadata/, targets/); default data_dir/ota"
    )
    keys_dir: Path | None = Field(
        None,
        description="Online signing keys (targets, snapshot, timestamp) for the timestamp "
        "refresh; root keys are not needed here. Unset: no refresh (timestamps are "
        "refreshed elsewhere, e.g. by `camfleet-server release timestamp` from cron)",
    )
    https_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTPS listener for devices serving /ota/ with the server certificate "
        "(the one EST uses); unset = /ota/ only on the REST API port",
    )
    https_host: str = Field("127.0.0.1", description="Address the OTA HTTPS listener binds to")
    require_client_cert: bool = Field(
        False,
        description="On the HTTPS listener, serve only devices that present a certificate of "
        "the fleet CA (TUF already makes content integrity independent of the transport)",
    )
    refresh_check_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="How often the timestamp is checked; it is re-signed when less than half "
        "of its lifetime is left",
    )


def repo_dir_of(settings: OtaSettings, data_dir: Path) -> Path:
    """The repository directory: ``[ota] repo_dir``, default ``data_dir/ota``."""
    return settings.repo_dir or data_dir / "ota"
