"""Wires the agent's command handler to the parts it acts on (capture, logs, systemd)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Any

from agent.config import AgentSettings
from agent.link.commands import Abilities, Commands, LogRing
from agent.vision.camera import Capture, Frame
from agent.vision.privacy import ImageWithheld, PrivacyState

log = logging.getLogger(__name__)

SNAPSHOT_SIDE = 640


def frame_jpeg(
    frame: Frame | None, limit: int, guard: PrivacyState | None = None
) -> tuple[bytes, dict[str, Any] | None] | None:
    """The whole frame as a JPEG of at most ``limit`` bytes (downscaled as needed), with its
    privacy masks blacked out and as the policy lets it leave (``guard``; ImageWithheld
    when it does not), and the marking that says so."""
    if frame is None:
        return None
    import cv2
    import numpy as np

    from agent.vision.pipeline import jpeg_snapshot

    rgb = frame.pixels
    if rgb is None:
        decoded = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            return None
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if guard is None:
        jpeg = jpeg_snapshot(rgb, (0.0, 0.0, 1.0, 1.0), SNAPSHOT_SIDE, limit)
        return (jpeg, None) if jpeg is not None else None
    rgb = guard.mask_frame(np.array(rgb, copy=True))
    full = jpeg_snapshot(rgb, (0.0, 0.0, 1.0, 1.0), SNAPSHOT_SIDE, limit)
    out = guard.outgoing(rgb, full)
    return out.jpeg, out.marking


def make_commands(
    settings: AgentSettings,
    capture: Capture,
    stop_event: threading.Event,
    ring: LogRing,
    guard: PrivacyState | None = None,
) -> Commands:
    started = time.monotonic()
    last_marking: list[dict[str, Any] | None] = [None]

    def reboot() -> None:
        log.warning("reboot requested by the fleet server: %s", settings.commands.reboot_command)
        threading.Timer(1.0, _run, args=(settings.commands.reboot_command,)).start()

    def restart() -> None:
        # systemd (Restart=always) starts the agent again; on a rig the process just ends
        log.warning("restart requested by the fleet server")
        threading.Timer(1.0, stop_event.set).start()

    def snapshot() -> bytes | None:
        from agent.link.commands import SNAPSHOT_MAX_BYTES

        try:
            got = frame_jpeg(capture.latest(), SNAPSHOT_MAX_BYTES, guard)
        except ImageWithheld as exc:
            raise PermissionError(str(exc)) from exc
        if got is None:
            return None
        last_marking[0] = got[1]
        return got[0]

    can = Abilities(
        allow_reboot=settings.commands.allow_reboot,
        reboot=reboot,
        restart=restart,
        snapshot=snapshot,
        uptime_s=lambda: time.monotonic() - started,
        log_lines=lambda n: list(ring.lines)[-n:],
        snapshot_marking=lambda: last_marking[0],
    )
    defaults: dict[str, Any] = {"heartbeat_s": float(settings.heartbeat_s)}
    on_privacy = guard.apply if guard is not None else None
    return Commands(settings.state_dir, None, can, defaults, on_privacy)


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("reboot command failed: %s", exc)
