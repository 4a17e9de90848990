"""The agent's identity upkeep, wired into ``service.run`` in two lines: wait for a sane
clock before anything touches TLS, then keep the certificate renewed in the background."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from agent.config import AgentSettings
from agent.identity.clock_guard import ClockGuard
from agent.identity.renewal import Renewer

log = logging.getLogger(__name__)


@dataclass
class Identity:
    guard: ClockGuard
    renewer: Renewer | None

    def stop(self) -> None:
        if self.renewer is not None:
            self.renewer.stopped.set()
            self.renewer.join(timeout=5)


def start_identity(settings: AgentSettings, stop: threading.Event) -> Identity | None:
    """None when ``stop`` was set while the clock was still untrusted."""
    guard = ClockGuard(settings.state_dir)
    if not guard.wait_sane(stop):
        return None
    renewer = None
    if settings.renewal is not None:
        m = settings.mqtt
        renewer = Renewer(
            settings.device_id, settings.renewal, ca=m.ca, cert=m.cert, key=m.key, guard=guard
        )
        renewer.start()
        plan = renewer.current_plan()
        log.info(
            "certificate renewal planned at %.0f (expires %.0f)", plan.renew_at, plan.expires_at
        )
    return Identity(guard, renewer)
