"""What the agent's main loop runs beside the heartbeat: systemd notification (READY,
watchdog, STOPPING), the Prometheus metrics and, with a ``[pipeline]``, the detection side
(pipeline thread, outbox, sender). The main loop calls it in a few places only."""

from __future__ import annotations

import time

from agent.config import AgentSettings
from agent.health.metrics import AgentMetrics
from agent.link.mqtt import Link
from agent.sdnotify import Notifier
from agent.vision.camera import Capture
from agent.vision.privacy import PrivacyState
from agent.vision.runner import Detection, start_detection


class Supervisor:
    def __init__(
        self, settings: AgentSettings, capture: Capture, link: Link,
        guard: PrivacyState | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.link = link
        self.metrics = AgentMetrics()
        self.notifier = Notifier()
        # checks the detector, model card, labels and outbox now: a bad config stops here
        self.detection: Detection | None = start_detection(
            settings, capture, link, self.metrics, guard
        )

    def start(self) -> None:
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        if self.detection is not None:
            self.detection.start()

    def ready(self) -> None:
        self.notifier.ready(f"agent {self.settings.device_id} running")

    def tick(self, now: float | None = None) -> None:
        """Once per main-loop turn: the watchdog ping, withheld while a thread hangs (then
        systemd restarts the agent)."""
        now = time.monotonic() if now is None else now
        det = self.detection
        if det is None or not det.stalled(now, self.settings.watchdog_stall_s):
            self.notifier.watchdog()
        self.metrics.mqtt_connected.set(1 if self.link.is_connected() else 0)

    def heartbeat_fields(self) -> dict[str, object]:
        return self.detection.heartbeat_fields(self.metrics) if self.detection else {}

    def stop(self) -> None:
        """Before the link closes: end tracks, send the last counts and what else it can."""
        self.notifier.stopping()
        if self.detection is not None:
            self.detection.stop(self.link)

    def close(self) -> None:
        if self.detection is not None:
            self.detection.outbox.close()
        self.notifier.close()
