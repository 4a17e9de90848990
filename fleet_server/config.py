"""Fleet server settings: one TOML file, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from firmware import contract
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.settings import IdentitySettings
from fleet_server.ota.settings import OtaSettings
from fleet_server.rollouts.settings import RolloutSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    host: str = Field("localhost", description="Broker host name (must match its certificate)")
    port: int = Field(8883, ge=1, le=65535, description="Broker TLS port")
    client_id: str = Field(
        "fleet-server-1", description="MQTT client id of this worker; unique per worker"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        description="Seconds the broker keeps this worker's session (and queued messages) "
        "after a disconnect",
    )
    shared: bool = Field(
        True, description="Join the MQTT v5 shared subscription group so workers split the load"
    )


class BrokerSettings(_Section):
    listen_port: int = Field(8883, ge=1, le=65535, description="Port Mosquitto listens on")
    bind: str = Field("127.0.0.1", description="Address Mosquitto binds to")
    hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Names and addresses put in the broker certificate",
    )
    pairs: dict[str, str] = Field(
        default_factory=dict,
        description="Cabinet node id -> the edge box id it supervises: the ACL lets each "
        "node read that box's heartbeats (docs/firmware.md)",
    )

    @field_validator("pairs")
    @classmethod
    def _device_ids(cls, pairs: dict[str, str]) -> dict[str, str]:
        for node, box in pairs.items():
            if not (contract.valid_device_id(node) and contract.valid_device_id(box)):
                raise ValueError(f"pair {node!r} -> {box!r}: both must be device ids")
            if node == box:
                raise ValueError(f"{node!r} cannot supervise itself")
        return pairs


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="REST API port")


class HealthSettings(_Section):
    heartbeat_grace: float = Field(
        3.0,
        ge=1.5,
        le=100,
        description="A device is offline when no heartbeat came for this many of its "
        "own heartbeat intervals",
    )
    check_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often the heartbeat deadlines are checked, seconds"
    )
    rules: RuleThresholds = Field(
        default_factory=RuleThresholds, description="Thresholds of the health rules"
    )


class AlertSettings(_Section):
    webhook_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Every alert change is POSTed here as JSON (none: no webhook)",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="Webhook request timeout")
    webhook_attempts: int = Field(
        3, ge=1, le=10, description="Tries per alert change before it is counted as failed"
    )
    webhook_queue: int = Field(
        1000, ge=1, description="Alert changes waiting for the webhook; beyond it, counted drops"
    )
    publish_mqtt: bool = Field(
        True, description="Publish every alert change on the MQTT alerts topic"
    )


class IngestSettings(_Section):
    batch_size: int = Field(500, ge=1, le=100_000, description="Most messages per DB transaction")
    batch_ms: int = Field(
        50, ge=1, le=10_000, description="Longest a message waits for its batch, milliseconds"
    )
    queue_size: int = Field(
        20_000,
        ge=10,
        description="Messages held between MQTT and the DB writer; when full, reading from "
        "the broker pauses (the broker queues for us)",
    )


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

    @property
    def pki_dir(self) -> Path:
        return self.pki_path or self.data_dir / "pki"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fleet.db'}"
