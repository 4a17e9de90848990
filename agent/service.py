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
from agent.commands import Commands, LogRing
from agent.config import AgentSettings
from agent.errors import PayloadError, StateDirError
from agent.health import HostReader, build_heartbeat, process_age_s, software_versions
from agent.identity import start_identity
from agent.link import Link
from agent.remote import make_commands
from agent.supervisor import Supervisor

log = logging.getLogger(__name__)

# Longest sleep of the heartbeat loop: how quickly it notices a new connection.
_TICK_S = 0.25


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


def _wire_downlink(
    settings: AgentSettings, capture: Capture, stop_event: threading.Event
) -> tuple[LogRing, Commands, Link]:
    """The MQTT link with the command handler on its downlink, and the log ring it reads."""
    ring = LogRing()
    logging.getLogger().addHandler(ring)
    remote = make_commands(settings, capture, stop_event, ring)
    link = Link(settings.device_id, settings.mqtt, on_message=remote.handle)
    remote.publish = link.publish
    return ring, remote, link


def _publish_heartbeat(link: Link, body: dict[str, Any]) -> None:
    try:
        link.publish("heartbeat", body)
    except PayloadError as exc:
        log.error("heartbeat not sent: %s", exc)


def run(settings: AgentSettings, stop_event: threading.Event) -> None:
    """Run the agent until ``stop_event`` is set. Raises AgentError if it cannot start."""
    _prepare_state_dir(settings)
    identity = start_identity(settings, stop_event)  # sane clock first, then renewal
    if identity is None:
        return
    versions = software_versions()
    reader = HostReader(settings.state_dir)
    capture = _make_capture(settings)
    ring, remote, link = _wire_downlink(settings, capture, stop_event)
    extras = Supervisor(settings, capture, link)  # systemd, metrics, detection pipeline
    started = time.monotonic()
    age_at_start = process_age_s()  # uptime_s counts from process start, on the monotonic clock
    seq = 0
    seen_connects = 0
    next_due = started
    try:
        link.start()
        capture.start()
        extras.start()
        log.info(
            "agent %s started (version %s, camera %s, heartbeat every %.1fs)",
            settings.device_id,
            versions["agent"],
            settings.camera.type,
            settings.heartbeat_s,
        )
        extras.ready()
        while not stop_event.is_set():
            now = time.monotonic()
            extras.tick(now)
            connects = link.connects
            if connects != seen_connects:
                seen_connects = connects
                next_due = now  # a heartbeat right after every (re)connect
            if now >= next_due:
                interval = float(remote.applied["heartbeat_s"])  # live from desired config
                next_due = now + interval
                if link.is_connected():
                    body = build_heartbeat(
                        seq, interval, age_at_start + now - started, reader.read(),
                        capture.stats(), versions,
                    )  # fmt: skip
                    body.update(extras.heartbeat_fields())
                    _publish_heartbeat(link, body)
                    seq += 1
                elif seen_connects:
                    seq += 1  # a beat missed while the link is down: the gap shows in seq
            stop_event.wait(min(_TICK_S, max(0.0, next_due - time.monotonic())))
    finally:
        log.info("stopping")
        identity.stop()
        capture.stop()
        extras.stop()  # ends tracks, sends what it can; the rest waits on disk
        link.close("shutdown")
        extras.close()
        logging.getLogger().removeHandler(ring)
        log.info("stopped")
