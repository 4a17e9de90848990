"""The health loop in the server process: devices whose heartbeat deadline passed go
offline, expired commands time out, old heartbeats are rolled up."""

from __future__ import annotations

import logging
import threading
import time

from fleet_server.health import retention
from fleet_server.health.notify import Notifier
from fleet_server.ingest.registry import Registry
from fleet_server.metrics import Metrics

log = logging.getLogger(__name__)


class DeadlineMonitor(threading.Thread):
    """Marks devices offline when their heartbeat deadline passes."""

    def __init__(
        self, registry: Registry, metrics: Metrics, notifier: Notifier, grace: float,
        every_s: float,
    ) -> None:  # fmt: skip
        super().__init__(name="deadline-monitor", daemon=True)
        self.registry = registry
        self.metrics = metrics
        self.notifier = notifier
        self.grace = grace
        self.every_s = every_s
        self.stopped = threading.Event()
        self._next_compact = 0.0

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                now = time.time()
                gone, changes = self.registry.mark_overdue(now, self.grace)
                expired = self.registry.expire_commands(now)
                if now >= self._next_compact:
                    self._next_compact = now + 60.0
                    with self.registry.sessions.begin() as db:
                        moved = retention.compact(db, now)
                    if moved:
                        log.info("rolled up %d heartbeats older than a day", moved)
            except Exception:  # a DB hiccup must not end the monitor
                log.exception("deadline check failed")
                continue
            for dev in gone:
                self.metrics.offline_deadline.inc()
                log.info("device %s offline: heartbeat deadline passed", dev)
            self.notifier.send(changes)
            for cid in expired:
                log.info("command %s timed out", cid)
