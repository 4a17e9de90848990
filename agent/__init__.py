"""camfleet edge agent: camera capture, health heartbeats and the MQTT link of a camera box.

Run it with ``camfleet-agent --config agent.toml`` (``agent.cli.main``), or in-process with
``agent.run(settings, stop_event)``.
"""

from agent.camera import (
    CameraSource,
    CameraStats,
    Capture,
    FileReplaySource,
    Frame,
    FrameQueue,
    SyntheticSource,
    make_source,
    register_source,
)
from agent.config import AgentSettings, MqttSettings
from agent.errors import AgentError, CameraError, LinkError, PayloadError, StateDirError
from agent.health import HostReader, HostReadings, build_heartbeat
from agent.link import Link
from agent.service import run

__all__ = [
    "AgentError",
    "AgentSettings",
    "CameraError",
    "CameraSource",
    "CameraStats",
    "Capture",
    "FileReplaySource",
    "Frame",
    "FrameQueue",
    "HostReader",
    "HostReadings",
    "Link",
    "LinkError",
    "MqttSettings",
    "PayloadError",
    "StateDirError",
    "SyntheticSource",
    "build_heartbeat",
    "make_source",
    "register_source",
    "run",
]
