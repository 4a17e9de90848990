"""Quarantine: an operator (or the flood rule, when ``auto_quarantine`` is on) shuts one
device out, reversibly.

Quarantining records the device (table ``quarantined_devices``, audited) and gives it a
deny-all role in Mosquitto's dynamic-security plugin, like revocation (which kicks the
live session, reason 0x98, and refuses its publishes after it reconnects), but its
certificate stays valid: releasing it removes the role and the device comes back on its
next reconnect. The ingest refuses whatever still reaches it from a quarantined device
(reason ``quarantined``); ingest workers in other processes learn the list from the table
within ``refresh_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Boolean, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.db import Base

log = logging.getLogger(__name__)

QUARANTINE_ROLE = "camfleet-quarantined"
_DENY_ALL = [
    {"acltype": t, "topic": "#", "allow": False, "priority": 0}
    for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
]

Kick = Callable[[str, bool], bool]  # (device, quarantined?) -> whether the broker obeyed


class QuarantinedDevice(Base):
    __tablename__ = "quarantined_devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    since: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(256))
    automatic: Mapped[bool] = mapped_column(Boolean)


def dynsec_commands(device_id: str, quarantined: bool) -> list[dict[str, object]]:
    """Commands that give (or take back) the deny-all role. The role is made on first use;
    "already exists" answers are expected and ignored."""
    if not quarantined:
        return [{"command": "removeClientRole", "username": device_id, "rolename": QUARANTINE_ROLE}]
    return [
        {"command": "createRole", "rolename": QUARANTINE_ROLE, "acls": _DENY_ALL},
        {"command": "createClient", "username": device_id},
        {"command": "addClientRole", "username": device_id, "rolename": QUARANTINE_ROLE,
         "priority": 900},
    ]  # fmt: skip


class Quarantine:
    def __init__(
        self, sessions: sessionmaker[Session] | None, kick: Kick | None = None,
        refresh_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.sessions = sessions
        self.kick = kick
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._ids: frozenset[str] = frozenset()
        self._loaded_at = 0.0
        self.stats: Callable[[], dict[str, Any]] = dict  # live figures from the ingest

    def has(self, device_id: str) -> bool:
        return device_id in self._ids  # a frozenset swapped whole: no lock on the hot path

    def refresh(self, force: bool = False) -> None:
        """Read the list from the table (every ``refresh_s``; the supervisor's tick)."""
        now = time.monotonic()
        if self.sessions is None or (not force and now - self._loaded_at < self.refresh_s):
            return
        with self.sessions() as db:
            ids = frozenset(db.scalars(select(QuarantinedDevice.device_id)).all())
        with self._lock:
            self._ids = ids
            self._loaded_at = now

    def listing(self) -> list[QuarantinedDevice]:
        if self.sessions is None:
            return []
        with self.sessions() as db:
            return list(db.scalars(select(QuarantinedDevice).order_by(QuarantinedDevice.since)))

    def put(self, device_id: str, by: Actor, reason: str, automatic: bool = False) -> bool:
        """Quarantine ``device_id``; whether the broker shut it out (False: no plugin, or
        it did not answer; the ingest refuses its messages either way)."""
        if self.sessions is not None:
            with self.sessions.begin() as db:
                if db.get(QuarantinedDevice, device_id) is None:
                    db.add(QuarantinedDevice(device_id=device_id, since=time.time(),
                                             by=by.name[:64], reason=reason[:256],
                                             automatic=automatic))  # fmt: skip
                audit.record(db, by, "device.quarantine", device_id,
                             detail={"reason": reason, "automatic": automatic})  # fmt: skip
        with self._lock:
            self._ids = self._ids | {device_id}
        kicked = self.kick(device_id, True) if self.kick is not None else False
        log.warning("device %s quarantined by %s (%s); broker shut it out: %s", device_id,
                    by.name, reason, kicked)  # fmt: skip
        return kicked

    def release(self, device_id: str, by: Actor) -> bool:
        """End the quarantine; False when the device was not quarantined."""
        if self.sessions is not None:
            with self.sessions.begin() as db:
                row = db.get(QuarantinedDevice, device_id)
                if row is None:
                    return False
                db.delete(row)
                audit.record(db, by, "device.release", device_id)
        with self._lock:
            self._ids = self._ids - {device_id}
        if self.kick is not None:
            self.kick(device_id, False)
        log.warning("device %s released from quarantine by %s", device_id, by.name)
        return True
