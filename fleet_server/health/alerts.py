"""Alerts: open, acknowledged, resolved; one active alert per device and rule.

``AlertBook`` runs inside the registry's transaction (the device row is locked, so two
ingest workers never race on one device's conditions) and returns the changes; the
notifier sends them out after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet_server.db import Base
from fleet_server.health import rules

log = logging.getLogger(__name__)

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
ACTIVE = (OPEN, ACKNOWLEDGED)


class AlertError(Exception):
    """An alert operation that cannot be done (unknown alert, wrong state)."""


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(String(256))
    value: Mapped[str | None] = mapped_column(String(64), nullable=True)
    opened_at: Mapped[float] = mapped_column(Float)
    acknowledged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AlertCondition(Base):
    """Consecutive bad/good observations of one rule on one device (flap suppression)."""

    __tablename__ = "alert_conditions"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(32), primary_key=True)
    bad_count: Mapped[int] = mapped_column(Integer, default=0)
    good_count: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class AlertChange:
    alert_id: int
    device_id: str
    rule: str
    severity: str
    state: str
    message: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "device_id": self.device_id,
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
            "at": self.at,
        }


def _change(alert: Alert, state: str, at: float) -> AlertChange:
    return AlertChange(
        alert.id, alert.device_id, alert.rule, alert.severity, state, alert.message, at
    )


class _Snapshot:
    """Active alerts and flap counters of a batch's devices, loaded with two queries."""

    def __init__(self, db: Session, device_ids: Iterable[str]) -> None:
        ids = sorted(set(device_ids))
        self.active: dict[tuple[str, str], Alert] = {}
        self.conditions: dict[tuple[str, str], AlertCondition] = {}
        self.devices: set[str] = set()  # those with an active alert or a flap counter
        if not ids:
            return
        for a in db.scalars(
            select(Alert).where(Alert.device_id.in_(ids), Alert.state.in_(ACTIVE))
        ).all():
            self.active[(a.device_id, a.rule)] = a
            self.devices.add(a.device_id)
        for c in db.scalars(select(AlertCondition).where(AlertCondition.device_id.in_(ids))).all():
            self.conditions[(c.device_id, c.rule)] = c
            self.devices.add(c.device_id)


class AlertBook:
    def __init__(self, thresholds: rules.RuleThresholds) -> None:
        self.t = thresholds
        self.lag = rules.DeliveryLag()

    def observe_batch(
        self,
        db: Session,
        states: Sequence[tuple[str, str, str | None, float]],
        heartbeats: Sequence[tuple[str, dict[str, Any], float]],
    ) -> list[AlertChange]:
        """State changes (device, state, reason, at) first, then heartbeats, in order.

        Runs in the caller's transaction with the device rows locked; reads what it needs
        in two queries whatever the batch size.
        """
        for device_id, body, at in heartbeats:
            ts = body.get("ts")
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                self.lag.add(device_id, at - ts)
        lag_s = self.lag.seconds() if heartbeats else 0.0
        snap = _Snapshot(db, [s[0] for s in states] + [h[0] for h in heartbeats])
        steps: list[tuple[Alert, str, float]] = []  # in order; ids exist after the flush
        with db.no_autoflush:
            for device_id, state, reason, at in states:
                self._state(db, snap, device_id, state, reason, at, steps)
            for device_id, body, at in heartbeats:
                self._heartbeat(db, snap, device_id, body, at, lag_s, steps)
        if steps:
            db.flush()
        return [_change(alert, state, at) for alert, state, at in steps]

    def observe_state(
        self, db: Session, device_id: str, state: str, reason: str | None, at: float
    ) -> list[AlertChange]:
        return self.observe_batch(db, [(device_id, state, reason, at)], [])

    def observe_heartbeat(
        self, db: Session, device_id: str, body: dict[str, Any], at: float
    ) -> list[AlertChange]:
        return self.observe_batch(db, [], [(device_id, body, at)])

    def _heartbeat(
        self, db: Session, snap: _Snapshot, device_id: str, body: dict[str, Any], at: float,
        lag_s: float, steps: list[tuple[Alert, str, float]],
    ) -> None:  # fmt: skip
        findings = rules.broken_rules(rules.evaluate(body, at, self.t, lag_s))
        if not findings and device_id not in snap.devices:
            return  # a healthy device with nothing to count down: the common case
        snap.devices.add(device_id)
        for rule in rules.RULES:
            key = (device_id, rule)
            active = snap.active.get(key)
            cond = snap.conditions.get(key)
            if cond is None:
                if rule not in findings and active is None:
                    continue  # nothing to remember
                cond = AlertCondition(device_id=device_id, rule=rule, bad_count=0, good_count=0)
                db.add(cond)
                snap.conditions[key] = cond
            s = rules.step(rule in findings, cond.bad_count, cond.good_count, active is not None,
                           self.t)  # fmt: skip
            cond.bad_count, cond.good_count = s.bad_count, s.good_count
            if s.open:
                f = findings[rule]
                alert = self._new(db, device_id, rule, f.severity, f.message, f.value, at)
                snap.active[key] = alert
                steps.append((alert, OPEN, at))
            elif s.resolve and active is not None:
                steps.append((self._resolve(active, at), RESOLVED, at))
                del snap.active[key]

    def _state(
        self, db: Session, snap: _Snapshot, device_id: str, state: str, reason: str | None,
        at: float, steps: list[tuple[Alert, str, float]],
    ) -> None:  # fmt: skip
        """Offline opens the ``offline`` alert at once; online resolves it."""
        key = (device_id, rules.OFFLINE_RULE)
        active = snap.active.get(key)
        if state == "offline" and active is None:
            msg = f"device offline ({reason or 'unknown reason'})"
            alert = self._new(db, device_id, rules.OFFLINE_RULE, rules.CRITICAL, msg, None, at)
            snap.active[key] = alert
            steps.append((alert, OPEN, at))
        elif state == "online" and active is not None:
            steps.append((self._resolve(active, at), RESOLVED, at))
            del snap.active[key]

    @staticmethod
    def _new(db: Session, device_id: str, rule: str, severity: str, message: str,
             value: float | str | None, at: float) -> Alert:  # fmt: skip
        alert = Alert(device_id=device_id, rule=rule, severity=severity, state=OPEN,
                      message=message[:256], value=None if value is None else str(value)[:64],
                      opened_at=at)  # fmt: skip
        db.add(alert)
        return alert

    @staticmethod
    def _resolve(alert: Alert, at: float) -> Alert:
        alert.state = RESOLVED
        alert.resolved_at = at
        return alert

    @staticmethod
    def acknowledge(db: Session, alert_id: int, who: str, at: float) -> AlertChange:
        alert = db.get(Alert, alert_id, with_for_update=True)
        if alert is None:
            raise AlertError(f"no alert {alert_id}")
        if alert.state != OPEN:
            raise AlertError(f"alert {alert_id} is {alert.state}, not open")
        alert.state = ACKNOWLEDGED
        alert.acknowledged_at = at
        alert.acknowledged_by = who[:64]
        return _change(alert, ACKNOWLEDGED, at)
