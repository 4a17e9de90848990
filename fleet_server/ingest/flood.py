"""What the ingest does about a flood (``budget.py`` decides there is one): a "flooding"
alert per device (opened when it begins, resolved when it is over) and, with
``[ingest.budget] auto_quarantine``, the device's quarantine."""

from __future__ import annotations

import logging
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access.audit import Actor
from fleet_server.health.alerts import ACTIVE, OPEN, RESOLVED, Alert, AlertChange
from fleet_server.health.rules import CRITICAL
from fleet_server.ingest.budget import Budget
from fleet_server.ingest.quarantine import Quarantine

log = logging.getLogger(__name__)

FLOODING_RULE = "flooding"
SYSTEM = Actor("system", "system", "flood rule")


def _change(alert: Alert, state: str, at: float) -> AlertChange:
    return AlertChange(alert.id, alert.device_id, alert.rule, alert.severity, state,
                       alert.message, at)  # fmt: skip


def flood_alerts(
    sessions: sessionmaker[Session], began: dict[str, int], ended: list[str], at: float
) -> list[AlertChange]:
    """Open the alert of each device that began flooding, resolve those whose flood ended."""
    changes: list[AlertChange] = []
    with sessions.begin() as db:
        for device_id in sorted(set(began) | set(ended)):
            active = db.scalars(
                select(Alert).where(
                    Alert.device_id == device_id,
                    Alert.rule == FLOODING_RULE,
                    Alert.state.in_(ACTIVE),
                )
            ).first()
            if device_id in began and active is None:
                msg = f"flooding: over its message budget, {began[device_id]} messages dropped"
                alert = Alert(device_id=device_id, rule=FLOODING_RULE, severity=CRITICAL,
                              state=OPEN, message=msg[:256], value=str(began[device_id]),
                              opened_at=at)  # fmt: skip
                db.add(alert)
                db.flush()
                changes.append(_change(alert, OPEN, at))
            elif device_id in ended and active is not None:
                active.state, active.resolved_at = RESOLVED, at
                changes.append(_change(active, RESOLVED, at))
    return changes


class FloodWatch:
    """Called every second or so (the supervisor's tick)."""

    def __init__(self, budget: Budget, sessions: sessionmaker[Session], quarantine: Quarantine,
                 send: object = None) -> None:  # fmt: skip
        self.budget = budget
        self.sessions = sessions
        self.quarantine = quarantine
        self.send = send  # Notifier.send, when alerts are published
        self._pending: tuple[dict[str, int], list[str]] = ({}, [])

    def tick(self) -> list[AlertChange]:
        began, ended = self.budget.floods(time.monotonic())
        counts = self.budget.flooding()
        pend_began, pend_ended = self._pending
        pend_began.update({d: counts.get(d, 0) for d in began})
        pend_ended += ended
        if not pend_began and not pend_ended:
            return []
        for device_id in began:
            log.warning("device %s is flooding: over its budget for %.0fs", device_id,
                        self.budget.settings.flood_after_s)  # fmt: skip
            if self.budget.settings.auto_quarantine and not self.quarantine.has(device_id):
                self.quarantine.put(device_id, SYSTEM, "flooding", automatic=True)
        changes = flood_alerts(self.sessions, pend_began, pend_ended, time.time())
        self._pending = ({}, [])  # written: a DB error above keeps them for the next tick
        if self.send is not None and changes:
            self.send(changes)  # type: ignore[operator]
        return changes
