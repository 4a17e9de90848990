"""Fleet server settings: one TOML file, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_server.broker.settings import BrokerSettings
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.health.settings import AlertSettings, HealthSettings
from fleet_server.identity.settings import IdentitySettings
from fleet_server.ingest.settings import IngestSettings, MqttSettings
from fleet_server.ota.settings import OtaSettings
from fleet_server.privacy.settings import PrivacySettings
from fleet_server.receipts.settings import ReceiptSettings
from fleet_server.rollouts.settings import RolloutSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="REST API port")
    tls: bool = Field(
        False,
        description="Serve the API and the dashboard over HTTPS only (docs/deploy.md); the "
        "packaged server sets it",
    )
    tls_cert: Path | None = Field(
        None,
        description="HTTPS certificate chain (PEM); default: the fleet CA's server "
        "certificate for [broker] hosts (pki_dir/est.pem, made when missing)",
    )
    tls_key: Path | None = Field(
        None, description="Private key of tls_cert (PEM); default: pki_dir/est.key"
    )
    session_s: int = Field(
        12 * 3600, ge=60, le=30 * 86400,
        description="Life of a dashboard session (sign-out or an admin ends it sooner)",
    )  # fmt: skip
    csp_img_src: list[str] = Field(
        default_factory=list,
        description="More image sources the dashboard's Content-Security-Policy allows "
        "(e.g. a map tile server's origin); everything else comes from this server only",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CAMFLEET_SERVER_")

    data_dir: Path = Field(
        Path("/var/lib/camfleet"),
        description="State directory: pki/ (CA), broker/ (Mosquitto config), fleet.db",
    )
    pki_path: Path | None = Field(
        None, description="Certificate authority directory; default data_dir/pki"
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default SQLite in data_dir. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    log_level: str = Field("INFO", description="Python logging level")
    role_metrics_port: int = Field(
        0,
        ge=0,
        le=65000,
        description="Prometheus /metrics of the processes run with `run --role est` (this "
        "port) and `--role ingest --instance N` (this port + N) on 127.0.0.1; 0: none "
        "(the API process serves its own on the API port)",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT client")
    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="Mosquitto")
    api: ApiSettings = Field(default_factory=ApiSettings, description="REST API")
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health checks")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="MQTT ingest")
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings, description="Certificates, enrollment, revocation"
    )
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="Alert delivery")
    ota: OtaSettings = Field(
        default_factory=OtaSettings, description="OTA release repository (docs/ota.md)"
    )
    rollouts: RolloutSettings = Field(
        default_factory=RolloutSettings, description="Rollout campaigns (docs/ota.md)"
    )
    receipts: ReceiptSettings = Field(
        default_factory=ReceiptSettings,
        description="Receipts to devices and event loss accounting (docs/protocol.md)",
    )
    privacy: PrivacySettings = Field(
        default_factory=PrivacySettings,
        description="Snapshot policies, retention, data-subject exports (docs/privacy.md)",
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings,
        description="Operators' dashboard: language, time zone, refresh (docs/operations.md)",
    )

    @property
    def pki_dir(self) -> Path:
        return self.pki_path or self.data_dir / "pki"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fleet.db'}"
