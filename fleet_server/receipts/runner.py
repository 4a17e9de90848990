"""The loss monitor: ages open holes into losses, opens alerts, sets the /metrics gauges."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.health.notify import Notifier
from fleet_server.metrics import Metrics
from fleet_server.receipts import store
from fleet_server.receipts.settings import ReceiptSettings

log = logging.getLogger(__name__)


class LossMonitor(threading.Thread):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        metrics: Metrics,
        notifier: Notifier | None,
        settings: ReceiptSettings,
    ) -> None:
        super().__init__(name="loss-monitor", daemon=True)
        self.sessions = sessions
        self.metrics = metrics
        self.notifier = notifier
        self.settings = settings
        self.stopped = threading.Event()

    def check(self, now: float | None = None) -> store.Totals:
        """One round (public for tests): age holes, send alerts, set the gauges."""
        with self.sessions.begin() as db:
            changes = store.age(db, time.time() if now is None else now,
                                self.settings.lost_after_s)  # fmt: skip
        with self.sessions() as db:
            t = store.totals(db)
        if changes and self.notifier is not None:
            self.notifier.send(changes)
        for c in changes:
            log.warning("device %s: %s", c.device_id, c.message)
        m = self.metrics
        m.events_lost.set(t.lost)
        m.events_missing.set(t.open)
        m.events_refused_at_source.labels(why="refused").set(t.refused)
        m.events_refused_at_source.labels(why="dropped").set(t.dropped)
        m.events_late.set(t.late)
        m.events_unreceipted.set(t.unreceipted)
        return t

    def run(self) -> None:
        while not self.stopped.wait(self.settings.check_interval_s):
            try:
                self.check()
            except SQLAlchemyError:  # a DB hiccup must not end the monitor
                log.exception("loss check failed")
