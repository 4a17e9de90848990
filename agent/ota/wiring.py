"""What the agent (agent.service) calls for OTA: three hooks around ``Updater``.

``AgentOta.create`` makes one always; without an ``[ota]`` table (or with it disabled) every
hook does nothing and the agent runs exactly as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import AgentSettings
from agent.ota.install import GateOutcome
from agent.ota.updater import Updater

if TYPE_CHECKING:
    from agent.vision.runner import PipelineThread

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]
Publish = Callable[[str, dict[str, object]], bool]


class _LinkView(Protocol):
    @property
    def connects(self) -> int: ...

    def is_connected(self) -> bool: ...


class _Stalls(Protocol):
    def stalled(self, now: float, limit_s: float) -> bool: ...


class AgentOta:
    def __init__(self, settings: AgentSettings, stop_event: threading.Event) -> None:
        self._publish: Publish | None = None
        self._stop_event = stop_event
        self._stall_s = settings.watchdog_stall_s
        self.beats = 0  # heartbeats sent while connected, since this process started
        self._seen_seq: int | None = None
        self._seen_connects = 0
        ota = settings.ota
        self.updater: Updater | None = None
        if ota is not None and ota.enabled:
            self.updater = Updater(
                ota, settings.state_dir, self._send, self._restart, default_ca=settings.mqtt.ca
            )

    @classmethod
    def create(
        cls, settings: AgentSettings, stop_event: threading.Event, versions: dict[str, str]
    ) -> AgentOta:
        """The hooks, with the running release put into ``versions`` (heartbeat) and what a
        crash left settled (``Updater.start``)."""
        ota = cls(settings, stop_event)
        if ota.updater is not None:
            versions.update(ota.updater.versions())
            ota.updater.start()
        return ota

    def route(self, handler: Handler) -> Handler:
        """The downlink handler with update_desired sent to the updater."""
        updater = self.updater
        if updater is None:
            return handler

        def dispatch(kind: str, body: dict[str, Any]) -> None:
            if kind == "update_desired":
                updater.handle_desired(body)
            else:
                handler(kind, body)

        return dispatch

    def use_pipeline(self, thread: PipelineThread) -> None:
        """With a live pipeline, a model update is judged on its evaluation set and then in
        shadow on the pipeline's frames (agent.ota.shadow) before it is promoted."""
        updater = self.updater
        if updater is None or thread.settings.detector is None:
            return
        limits = updater.settings.model_gate
        det = thread.settings.detector

        def shadow_gate(candidate: Path, current: Path | None) -> GateOutcome:
            from agent.ota.shadow import gate_with_shadow
            from agent.vision.runner import make_detector  # loads the detector runtime: only here

            running = make_detector(thread.settings)  # its own interpreter, same model
            if running is None:
                return updater.evaluation_gate(candidate, current)
            result = gate_with_shadow(
                thread,
                candidate,
                current,
                limits,
                current_detector=running,
                backend=det.backend,
                threads=det.threads,
            )
            return GateOutcome(result.ok, result.reason, result.detail, dict(result.figures))

        updater.gate = shadow_gate

    def attach(self, publish: Publish) -> None:
        self._publish = publish

    def tick(self, link: _LinkView, seq: int, detection: _Stalls | None, now: float) -> None:
        """Once per main-loop turn: report after a (re)connect, count heartbeats (``seq``
        grew while connected), let a trial commit or roll back."""
        updater = self.updater
        if updater is None:
            return
        connected = link.is_connected()
        if link.connects != self._seen_connects and connected:
            self._seen_connects = link.connects
            updater.on_connected()
        if connected and self._seen_seq is not None and seq > self._seen_seq:
            self.beats += seq - self._seen_seq
        self._seen_seq = seq
        pipeline_ok = detection is None or not detection.stalled(now, self._stall_s)
        updater.tick(connected, self.beats, pipeline_ok)

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()

    def _send(self, kind: str, body: dict[str, object]) -> bool:
        publish = self._publish
        return publish(kind, body) if publish is not None else False

    def _restart(self) -> None:
        """The restart seam: stop cleanly; the launcher (or systemd) starts the agent again
        from the release ``current`` names now."""
        log.info("restart for an update requested")
        self._stop_event.set()
