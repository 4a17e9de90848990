"""Settings of the ingest: its MQTT connection (``[mqtt]``) and batching (``[ingest]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet_server.ingest.budget import BudgetSettings


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
    keep_session_on_stop: bool = Field(
        True,
        description="A clean stop (SIGTERM) keeps this worker's session, so the broker queues "
        "its share of the group until it is back; false: a clean stop leaves the group "
        "(as `leave-group` does)",
    )
    shared: bool = Field(
        True, description="Join the MQTT v5 shared subscription group so workers split the load"
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
    refusal_log_interval_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Refused messages are logged once per device and reason, then at most one "
        "summary line per this many seconds (counts are in /metrics either way)",
    )
    thread_restarts_max: int = Field(
        5,
        ge=0,
        le=1000,
        description="An ingest thread that dies is started again, at most this many times a "
        "minute; once more and the process exits with status 70 (systemd starts it again)",
    )
    healthz_link_down_s: float = Field(
        30.0,
        gt=0,
        description="/healthz answers 503 while the MQTT link has been down longer than this",
    )
    budget: BudgetSettings = Field(
        default_factory=BudgetSettings,
        description="Per device and kind, the rate the server accepts ([ingest.budget])",
    )
