"""camfleet edge agent: camera capture, health heartbeats and the MQTT link of a camera box,
and the detection pipeline (motion gate, TFLite detector, tracker, counts, scene health)
with its on-disk outbox.

Run it with ``camfleet-agent --config agent.toml`` (``agent.cli.main``), or in-process with
``agent.run(settings, stop_event)``.
"""

from agent.config import AgentSettings, MqttSettings
from agent.errors import AgentError, CameraError, LinkError, PayloadError, StateDirError
from agent.health.heartbeat import HostReader, HostReadings, build_heartbeat
from agent.link.mqtt import Link
from agent.link.outbox import Outbox
from agent.service import run
from agent.vision.camera import (
    CameraSource,
    CameraStats,
    Capture,
    Frame,
    FrameQueue,
    make_source,
    register_source,
)
from agent.vision.camera_sim import FileReplaySource, SyntheticSource
from agent.vision.detector import Detection, Detector
from agent.vision.modelcard import ModelCard, load_card
from agent.vision.pipeline import Pipeline
from agent.vision.settings import PipelineSettings

__all__ = [
    "AgentError",
    "AgentSettings",
    "CameraError",
    "CameraSource",
    "CameraStats",
    "Capture",
    "Detection",
    "Detector",
    "FileReplaySource",
    "Frame",
    "FrameQueue",
    "HostReader",
    "HostReadings",
    "Link",
    "LinkError",
    "ModelCard",
    "MqttSettings",
    "Outbox",
    "PayloadError",
    "Pipeline",
    "PipelineSettings",
    "StateDirError",
    "SyntheticSource",
    "build_heartbeat",
    "load_card",
    "make_source",
    "register_source",
    "run",
]
