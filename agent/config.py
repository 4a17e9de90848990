"""The agent's configuration: one TOML file (see ``camfleet-agent --config``), read in main().

Every model refuses unknown keys, so a typo is an error at start rather than a setting that
silently does nothing. Environment variables ``CAMFLEET_AGENT_<FIELD>`` (nested with
``__``, e.g. ``CAMFLEET_AGENT_MQTT__PORT``) fill what the file leaves out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from firmware import contract

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class MqttSettings(BaseModel):
    """How the agent reaches the broker: TLS with its own client certificate."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "localhost",
        min_length=1,
        description="Broker host name; must match a name in the broker certificate.",
    )
    port: int = Field(8883, ge=1, le=65535, description="Broker TLS port.")
    ca: Path = Field(description="PEM file of the root CA that signed the broker certificate.")
    cert: Path = Field(description="PEM file of this device's certificate (CN = device id).")
    key: Path = Field(description="PEM file of this device's private key (never logged).")
    keepalive_s: int = Field(
        30,
        ge=5,
        le=3600,
        description="MQTT keepalive in seconds; the broker drops a silent "
        "client after 1.5 times this and publishes its last will.",
    )
    connect_timeout_s: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Seconds allowed for TCP connect plus TLS handshake, "
        "and again for the broker's CONNACK.",
    )
    reconnect_base_s: float = Field(
        1.0, gt=0, le=3600, description="Backoff base: retry n waits up to base * 2**n seconds."
    )
    reconnect_cap_s: float = Field(
        300.0, gt=0, le=86400, description="Longest wait between two reconnect attempts."
    )
    reconnect_first_spread_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="The first retry after a loss waits a uniform draw "
        "in [0, this): spreads a fleet's reconnects after a broker restart.",
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> MqttSettings:
        if self.reconnect_cap_s < self.reconnect_base_s:
            raise ValueError("reconnect_cap_s must not be smaller than reconnect_base_s")
        return self


class _CameraCommon(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fps: float = Field(5.0, gt=0, le=120, description="Frames per second to capture.")
    queue_size: int = Field(
        4,
        ge=1,
        le=256,
        description="Frames held for the detector; the oldest is dropped when the queue is full.",
    )
    retry_base_s: float = Field(
        1.0, gt=0, le=3600, description="First delay before reopening a failed source."
    )
    retry_cap_s: float = Field(
        60.0, gt=0, le=86400, description="Longest delay between two reopen attempts."
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> _CameraCommon:
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError("retry_cap_s must not be smaller than retry_base_s")
        return self


class FilesCameraSettings(_CameraCommon):
    """Replays the image files of a folder, in name order, round and round."""

    type: Literal["files"] = Field(description="Source kind: image files from a folder.")
    path: Path = Field(description="Folder holding the image files (.ppm .pgm .jpg .png .bmp).")


class SyntheticCameraSettings(_CameraCommon):
    """Makes small frames in memory (a gradient with a moving square); no hardware."""

    type: Literal["synthetic"] = Field(description="Source kind: frames made in memory.")
    width: int = Field(64, ge=8, le=1920, description="Frame width in pixels.")
    height: int = Field(48, ge=8, le=1080, description="Frame height in pixels.")


CameraSettings = Annotated[
    FilesCameraSettings | SyntheticCameraSettings, Field(discriminator="type")
]


def _default_camera() -> SyntheticCameraSettings:
    return SyntheticCameraSettings(type="synthetic")


class AgentSettings(BaseSettings):
    """Everything the edge agent needs to run."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="CAMFLEET_AGENT_", env_nested_delimiter="__"
    )

    device_id: str = Field(
        description="This box's id; equals the CN of its certificate and its MQTT client id."
    )
    mqtt: MqttSettings = Field(description="Broker connection.")
    heartbeat_s: float = Field(30.0, ge=1, le=86400, description="Seconds between two heartbeats.")
    state_dir: Path = Field(
        Path("/var/lib/camfleet-agent"),
        description="Directory for the agent's own state; its disk use is reported.",
    )
    camera: CameraSettings = Field(
        default_factory=_default_camera, description="Where frames come from."
    )
    log_level: LogLevel = Field("INFO", description="Lowest log level written.")

    @field_validator("device_id")
    @classmethod
    def _valid_device_id(cls, value: str) -> str:
        if not contract.valid_device_id(value):
            raise ValueError(
                f"invalid device id {value!r}: {contract.ID_MIN}-{contract.ID_MAX} characters "
                "of a-z, 0-9 and '-', not starting or ending with '-'"
            )
        return value
