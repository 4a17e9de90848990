"""Settings of health checks (``[health]``) and alert delivery (``[alerts]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet_server.health.rules import RuleThresholds


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
