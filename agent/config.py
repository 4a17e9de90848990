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

from agent.identity.renewal import RenewalSettings
from agent.ota.settings import OtaSettings
from agent.vision.settings import PipelineSettings
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
        30.0,
        gt=0,
        le=60,
        description="Longest wait between two reconnect attempts (at most 60 s, so that "
        "every device is back within a minute of the network's return).",
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
    """Replays the image files of a folder in name order, round and round (or one file)."""

    type: Literal["files"] = Field(description="Source kind: image files from a folder.")
    path: Path = Field(
        description="Folder holding the image files (.ppm .pgm .jpg .png .bmp), or one file."
    )


class SyntheticCameraSettings(_CameraCommon):
    """Makes small frames in memory (a gradient with a moving square); no hardware."""

    type: Literal["synthetic"] = Field(description="Source kind: frames made in memory.")
    width: int = Field(64, ge=8, le=1920, description="Frame width in pixels.")
    height: int = Field(48, ge=8, le=1080, description="Frame height in pixels.")


class OpenCvCameraSettings(_CameraCommon):
    """A V4L2 device, an RTSP/HTTP stream or a video file, read through OpenCV."""

    type: Literal["opencv"] = Field(description="Source kind: OpenCV VideoCapture.")
    url: str = Field(
        min_length=1,
        description='/dev/videoN, a device index ("0"), rtsp://... or a video file path.',
    )
    width: int | None = Field(None, ge=8, le=7680, description="Requested frame width.")
    height: int | None = Field(None, ge=8, le=4320, description="Requested frame height.")
    loop: bool = Field(True, description="Video files: start again at the end.")
    timeout_s: float = Field(
        10.0, gt=0, le=600, description="Open and read timeout of a stream, seconds."
    )


class PiCameraSettings(_CameraCommon):
    """The Raspberry Pi camera through picamera2 (only on Raspberry Pi OS)."""

    type: Literal["picamera2"] = Field(description="Source kind: picamera2.")
    width: int = Field(1280, ge=64, le=4608, description="Frame width.")
    height: int = Field(720, ge=64, le=2592, description="Frame height.")


CameraSettings = Annotated[
    FilesCameraSettings | SyntheticCameraSettings | OpenCvCameraSettings | PiCameraSettings,
    Field(discriminator="type"),
]


def _default_camera() -> SyntheticCameraSettings:
    return SyntheticCameraSettings(type="synthetic")


class CommandSettings(BaseModel):
    """What remote commands may do on this box."""

    model_config = ConfigDict(extra="forbid")

    allow_reboot: bool = Field(
        False, description="Whether the fleet server's reboot command may reboot the box."
    )
    reboot_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "reboot"],
        min_length=1,
        description="The command run to reboot (when allowed).",
    )


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
    commands: CommandSettings = Field(
        default_factory=CommandSettings, description="Remote commands (reboot permission)."
    )
    renewal: RenewalSettings | None = Field(
        None, description="Certificate renewal over EST; absent: the certificate is not renewed."
    )
    pipeline: PipelineSettings | None = Field(
        None,
        description="Detection, tracking, counting, scene health and the outbox; "
        "absent: the agent only sends heartbeats.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus metrics on 127.0.0.1:<port>; 0: off."
    )
    ota: OtaSettings | None = Field(
        None, description="Over-the-air updates (docs/ota.md); absent: updates are ignored."
    )
    watchdog_stall_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="No systemd watchdog ping once the pipeline thread has made no "
        "progress for this long, or it or the outbox sender has died (systemd then "
        "restarts the agent).",
    )

    @field_validator("device_id")
    @classmethod
    def _valid_device_id(cls, value: str) -> str:
        if not contract.valid_device_id(value):
            raise ValueError(
                f"invalid device id {value!r}: {contract.ID_MIN}-{contract.ID_MAX} characters "
                "of a-z, 0-9 and '-', not starting or ending with '-'"
            )
        return value
