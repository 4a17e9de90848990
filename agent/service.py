"""Wires the agent together: camera capture, the MQTT link, and the heartbeat loop.

``run(settings, stop_event)`` blocks until ``stop_event`` is set, then says offline and
returns. The CLI calls it with an event that SIGTERM/SIGINT set; tests call it in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.backoff import Backoff
from agent.camera import Capture, FrameQueue, make_source
from agent.config import AgentSettings
from agent.errors import PayloadError, StateDirError
from agent.health import HostReader, build_heartbeat, process_age_s, software_versions
from agent.link import Link

log = logging.getLogger(__name__)

# Longest sleep of the heartbeat loop: how quickly it notices a new connection.
_TICK_S = 0.25


def log_downlink(kind: str, body: dict[str, Any]) -> None:
    """Commands and desired config are only logged for now (later issues act on them)."""
    if kind == "cmd_req":
        log.info("command received: cid=%s cmd=%s (not handled yet)", body["cid"], body["cmd"])
    elif kind == "config_desired":
        log.info("desired config received: version %s (not applied yet)", body["version"])
    else:
        log.info("message of kind %s received", kind)


def _prepare_state_dir(settings: AgentSettings) -> None:
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirError(f"cannot create state dir {settings.state_dir}: {exc}") from exc


def _make_capture(settings: AgentSettings) -> Capture:
    cam = settings.camera
    return Capture(
        lambda: make_source(cam),
        FrameQueue(cam.queue_size),
        Backoff(cam.retry_base_s, cam.retry_cap_s, cam.retry_base_s),
        fps=cam.fps,
    )


def run(settings: AgentSettings, stop_event: threading.Event) -> None:
    """Run the agent until ``stop_event`` is set. Raises AgentError if it cannot start."""
    _prepare_state_dir(settings)
    versions = software_versions()
    reader = HostReader(settings.state_dir)
    capture = _make_capture(settings)
    link = Link(settings.device_id, settings.mqtt, on_message=log_downlink)
    started = time.monotonic()
    age_at_start = process_age_s()  # uptime_s counts from process start, on the monotonic clock
    seq = 0
    seen_connects = 0
    next_due = started
    try:
        link.start()
        capture.start()
        log.info(
            "agent %s started (version %s, camera %s, heartbeat every %.1fs)",
            settings.device_id,
            versions["agent"],
            settings.camera.type,
            settings.heartbeat_s,
        )
        while not stop_event.is_set():
            now = time.monotonic()
            connects = link.connects
            if connects != seen_connects:
                seen_connects = connects
                next_due = now  # a heartbeat right after every (re)connect
            if now >= next_due:
                next_due = now + settings.heartbeat_s
                if link.is_connected():
                    body = build_heartbeat(
                        seq,
                        settings.heartbeat_s,
                        age_at_start + now - started,
                        reader.read(),
                        capture.stats(),
                        versions,
                    )
                    try:
                        link.publish("heartbeat", body)
                    except PayloadError as exc:
                        log.error("heartbeat not sent: %s", exc)
                    seq += 1
                elif seen_connects:
                    seq += 1  # a beat missed while the link is down: the gap shows in seq
            stop_event.wait(min(_TICK_S, max(0.0, next_due - time.monotonic())))
    finally:
        log.info("stopping")
        link.close("shutdown")
        capture.stop()
        log.info("stopped")
