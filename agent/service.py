"""Wires the agent together: camera capture, the MQTT link, and the heartbeat loop.

``run(settings, stop_event)`` blocks until ``stop_event`` is set, then says offline and
returns. The CLI calls it with an event that SIGTERM/SIGINT set; tests call it in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.config import AgentSettings
from agent.errors import PayloadError, StateDirError
from agent.health.heartbeat import HostReader, build_heartbeat, process_age_s, software_versions
from agent.health.inventory import read_hardware
from agent.identity.upkeep import Identity, start_identity
from agent.link.backoff import Backoff
from agent.link.commands import Commands, LogRing
from agent.link.mqtt import Link
from agent.link.remote import make_commands
from agent.ota.wiring import AgentOta
from agent.supervisor import Supervisor
from agent.vision.camera import Capture, FrameQueue, make_source
from agent.vision.privacy import PrivacyState

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
    settings: AgentSettings,
    capture: Capture,
    stop_event: threading.Event,
    ota: AgentOta,
    guard: PrivacyState,
) -> tuple[LogRing, Commands, Link]:
    """The MQTT link with the command handler (and the updater) on its downlink, and the
    log ring it reads."""
    ring = LogRing()
    logging.getLogger().addHandler(ring)
    remote = make_commands(settings, capture, stop_event, ring, guard)
    link = Link(settings.device_id, settings.mqtt, on_message=ota.route(remote.handle))
    remote.publish = link.publish
    ota.attach(link.publish)
    return ring, remote, link


def _publish_heartbeat(link: Link, body: dict[str, Any]) -> bool:
    """Hand the heartbeat to the link. False only when the link was down (worth sending
    the same fields again); a body the contract refuses is logged and never retried."""
    try:
        return link.publish("heartbeat", body)
    except PayloadError as exc:
        log.error("heartbeat not sent: %s", exc)
        return True


def _send_beat(link: Link, body: dict[str, Any], hardware: dict[str, object] | None) -> bool:
    """Send a heartbeat, with the inventory when given; True when the inventory is still
    to be sent (the link was down)."""
    if hardware is not None:
        body["hardware"] = hardware
    return not _publish_heartbeat(link, body) and hardware is not None


def run(settings: AgentSettings, stop_event: threading.Event) -> None:
    """Run the agent until ``stop_event`` is set. Raises AgentError if it cannot start."""
    _prepare_state_dir(settings)
    identity = start_identity(settings, stop_event)  # sane clock first, then renewal
    if identity is None:
        return
    versions = software_versions()
    ota = AgentOta.create(settings, stop_event, versions)  # no-op without [ota]
    hardware = read_hardware(settings.camera.type)
    reader = HostReader(settings.state_dir)
    capture = _make_capture(settings)
    guard = PrivacyState(settings.state_dir)  # issue 20: policy and masks of this camera
    ring, remote, link = _wire_downlink(settings, capture, stop_event, ota, guard)
    extras = Supervisor(settings, capture, link, guard)  # systemd, metrics, detection pipeline
    if extras.detection is not None:
        ota.use_pipeline(extras.detection.thread)  # model updates also judged in shadow
    started = time.monotonic()
    age_at_start = process_age_s()  # uptime_s counts from process start, on the monotonic clock
    seq = 0
    # the hardware inventory goes in the first heartbeat after each connect
    seen_connects, send_hardware = 0, False
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
                send_hardware = True
            if now >= next_due:
                interval = float(remote.applied["heartbeat_s"])  # live from desired config
                next_due = now + interval
                if link.is_connected():
                    body = build_heartbeat(
                        seq, interval, age_at_start + now - started, reader.read(),
                        capture.stats(), versions,
                    )  # fmt: skip
                    body.update(extras.heartbeat_fields())
                    send_hardware = _send_beat(link, body, hardware if send_hardware else None)
                    seq += 1
                elif seen_connects:
                    seq += 1  # a beat missed while the link is down: the gap shows in seq
            ota.tick(link, seq, extras.detection, now)  # update state, trial, commit
            stop_event.wait(min(_TICK_S, max(0.0, next_due - time.monotonic())))
    finally:
        _shutdown(identity, capture, extras, link, ring, ota)


def _shutdown(
    identity: Identity,
    capture: Capture,
    extras: Supervisor,
    link: Link,
    ring: LogRing,
    ota: AgentOta,
) -> None:
    log.info("stopping")
    ota.stop()  # an install in progress stops between steps; the next start resumes it
    identity.stop()
    capture.stop()
    extras.stop()  # ends tracks, sends what it can; the rest waits on disk
    link.close("shutdown")
    extras.close()
    logging.getLogger().removeHandler(ring)
    log.info("stopped")
