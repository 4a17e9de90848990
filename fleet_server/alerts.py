"""Alerts: open, acknowledged, resolved; one active alert per device and rule.

``AlertBook`` runs inside the registry's transaction (the device row is locked, so two
ingest workers never race on one device's conditions) and returns the changes; the
notifier sends them out after the commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet_server import rules
from fleet_server.db import Base

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


def _change(alert: Alert, at: float) -> AlertChange:
    return AlertChange(
        alert.id, alert.device_id, alert.rule, alert.severity, alert.state, alert.message, at
    )


class AlertBook:
    def __init__(self, thresholds: rules.RuleThresholds) -> None:
        self.t = thresholds

    @staticmethod
    def _active(db: Session, device_id: str) -> dict[str, Alert]:
        rows = db.scalars(
            select(Alert).where(Alert.device_id == device_id, Alert.state.in_(ACTIVE))
        ).all()
        return {a.rule: a for a in rows}

    def observe_heartbeat(
        self, db: Session, device_id: str, body: dict[str, Any], at: float
    ) -> list[AlertChange]:
        findings = rules.broken_rules(rules.evaluate(body, at, self.t))
        active = self._active(db, device_id)
        conditions = {
            c.rule: c
            for c in db.scalars(
                select(AlertCondition).where(AlertCondition.device_id == device_id)
            ).all()
        }
        changes: list[AlertChange] = []
        for rule in rules.RULES:
            cond = conditions.get(rule)
            if cond is None:
                if rule not in findings and rule not in active:
                    continue  # nothing to remember
                cond = AlertCondition(device_id=device_id, rule=rule, bad_count=0, good_count=0)
                db.add(cond)
            s = rules.step(rule in findings, cond.bad_count, cond.good_count, rule in active,
                           self.t)  # fmt: skip
            cond.bad_count, cond.good_count = s.bad_count, s.good_count
            if s.open:
                f = findings[rule]
                changes.append(self._open(db, device_id, rule, f.severity, f.message, f.value, at))
            elif s.resolve:
                changes.append(self._resolve(active[rule], at))
        return changes

    def observe_state(self, db: Session, device_id: str, state: str, reason: str | None,
                      at: float) -> list[AlertChange]:  # fmt: skip
        """Offline opens the ``offline`` alert at once; online resolves it."""
        active = self._active(db, device_id).get(rules.OFFLINE_RULE)
        if state == "offline" and active is None:
            msg = f"device offline ({reason or 'unknown reason'})"
            return [self._open(db, device_id, rules.OFFLINE_RULE, rules.CRITICAL, msg, None, at)]
        if state == "online" and active is not None:
            return [self._resolve(active, at)]
        return []

    @staticmethod
    def _open(db: Session, device_id: str, rule: str, severity: str, message: str,
              value: float | str | None, at: float) -> AlertChange:  # fmt: skip
        alert = Alert(device_id=device_id, rule=rule, severity=severity, state=OPEN,
                      message=message[:256], value=None if value is None else str(value)[:64],
                      opened_at=at)  # fmt: skip
        db.add(alert)
        db.flush()  # the id, for the notification
        return _change(alert, at)

    @staticmethod
    def _resolve(alert: Alert, at: float) -> AlertChange:
        alert.state = RESOLVED
        alert.resolved_at = at
        return _change(alert, at)

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
        return _change(alert, at)
