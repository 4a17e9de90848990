"""The audit log: who did what, when, from where, and how it ended.

Entries go into the same transaction as the action they describe, so an action is never
stored without its entry; refusals get an entry of their own (``refused:<reason>``).
Secrets are never put in ``detail``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.identity.model import AuditEntry


@dataclass(frozen=True)
class Actor:
    name: str  # a user name, or token:<device>, cert:<device>, system
    role: str  # admin | operator | technician | device | system
    source: str  # client address


SYSTEM = Actor("system", "system", "local")


def row(
    actor: Actor, action: str, target: str, outcome: str, detail: dict[str, Any], at: float
) -> dict[str, Any]:
    """An audit entry's columns, cut to their sizes (``record``, and Core inserts on the
    enrollment hot path)."""
    return {
        "at": at,
        "actor": actor.name[:80],
        "role": actor.role[:32],
        "action": action[:64],
        "target": target[:128],
        "source": actor.source[:64],
        "outcome": outcome[:32],
        "detail": detail,
    }


def record(
    db: Session,
    actor: Actor,
    action: str,
    target: str,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    at: float | None = None,
) -> None:
    when = time.time() if at is None else at
    db.add(AuditEntry(**row(actor, action, target, outcome, detail or {}, when)))


def record_now(
    sessions: sessionmaker[Session],
    actor: Actor,
    action: str,
    target: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """An entry in its own transaction (for refusals, where the action stored nothing)."""
    with sessions.begin() as db:
        record(db, actor, action, target, outcome, detail)


def recent(
    sessions: sessionmaker[Session], limit: int = 100, action: str | None = None
) -> list[AuditEntry]:
    with sessions() as db:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if action:
            query = query.where(AuditEntry.action == action)
        return list(db.scalars(query).all())
