"""Revocation: an operator cuts a device off.

``Revoker.revoke`` records the device and its certificates as revoked (one transaction, with
its audit entry), rewrites the CRL, makes the broker reload it (SIGHUP: new handshakes of a
revoked certificate are refused) and, since a reload does not close a live session, gives
the device a deny-all role through Mosquitto's dynamic-security plugin, which kicks it
(reason 0x98) and refuses its publishes should it ever get in again. Renewal is refused by
the EST endpoint, which checks the same tables.

``CrlKeeper`` rewrites the CRL well before its ``next_update``: Mosquitto refuses every
client once the CRL it holds has expired.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.config import ServerSettings
from fleet_server.db import Device
from fleet_server.health import engine as health
from fleet_server.identity import server_identity
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import Revoked, read_crl, write_crl
from fleet_server.identity.model import EnrollmentToken, IssuedCertificate, RevokedDevice

log = logging.getLogger(__name__)

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DENY_ROLE = "camfleet-revoked"
REVOKED = "revoked"  # the state reason of a revoked device


class RevocationError(Exception):
    """The revocation could not be carried out completely (the log says which step)."""


class UnknownDevice(Exception):
    """Nothing is known of this device: no registry entry, certificate or token."""


@dataclass(frozen=True)
class RevokeResult:
    device_id: str
    certificates: int
    already: bool
    broker_reloaded: bool
    kicked: bool


def pid_file(settings: ServerSettings) -> Path:
    return settings.identity.broker_pid_file or settings.broker_dir / "mosquitto.pid"


class Revoker:
    def __init__(
        self, sessions: sessionmaker[Session], ca: CertificateAuthority, settings: ServerSettings
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.settings = settings
        self._crl_lock = threading.Lock()

    def revoke(self, device_id: str, by: Actor, reason: str) -> RevokeResult:
        """Revoke a device the fleet knows (registry, certificate or enrollment token);
        ``UnknownDevice`` (audited) for any other id."""
        now = time.time()
        count = 0
        with self.sessions.begin() as db:
            already = db.get(RevokedDevice, device_id) is not None
            unknown = not already and not _known(db, device_id)
            if not unknown:
                count = self._mark_revoked(db, device_id, by, reason, already, now)
        if unknown:
            audit.record_now(
                self.sessions, by, "device.revoke", device_id, "refused:unknown_device"
            )
            raise UnknownDevice(device_id)
        self.write_crl()
        reloaded = self.reload_broker()
        kicked = self.kick(device_id) if self.settings.identity.dynsec else False
        log.warning(
            "device %s revoked by %s (%d certificates; broker reloaded %s, kicked %s)",
            device_id,
            by.name,
            count,
            reloaded,
            kicked,
        )
        return RevokeResult(device_id, count, already, reloaded, kicked)

    def _mark_revoked(
        self, db: Session, device_id: str, by: Actor, reason: str, already: bool, now: float
    ) -> int:
        if not already:
            db.add(
                RevokedDevice(
                    device_id=device_id, revoked_at=now, revoked_by=by.name, reason=reason
                )
            )
        done = db.execute(
            update(IssuedCertificate)
            .where(
                IssuedCertificate.device_id == device_id,
                IssuedCertificate.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        count = int(getattr(done, "rowcount", 0) or 0)
        # its last will cannot reach us any more (the broker refuses all it publishes),
        # so the registry marks it offline here; a late status cannot bring it back
        dev = db.get(Device, device_id, with_for_update={"key_share": True})  # as ingest
        if dev is not None and (dev.state != health.OFFLINE or dev.state_reason != REVOKED):
            dev.state, dev.state_reason = health.OFFLINE, REVOKED
            dev.state_changed_at = now
            dev.state_ts = max(dev.state_ts, now)
        audit.record(db, by, "device.revoke", device_id, detail={"reason": reason, "certs": count})
        return count

    def is_revoked(self, device_id: str) -> bool:
        with self.sessions() as db:
            return db.get(RevokedDevice, device_id) is not None

    # ---------------------------------------------------------------- CRL
    def write_crl(self) -> None:
        """The CRL of every revoked certificate that has not expired yet."""
        now = time.time()
        with self.sessions() as db:
            rows = db.execute(
                select(IssuedCertificate.serial, IssuedCertificate.revoked_at).where(
                    IssuedCertificate.revoked_at.is_not(None), IssuedCertificate.not_after > now
                )
            ).all()
        revoked = [
            Revoked(int(serial, 16), dt.datetime.fromtimestamp(float(at), dt.UTC))
            for serial, at in rows
        ]
        with self._crl_lock:
            write_crl(self.ca, revoked, self.settings.identity.crl_days)
        log.info("CRL written with %d revoked certificates", len(revoked))

    def crl_needs_refresh(self, now: dt.datetime | None = None) -> bool:
        crl = read_crl(self.ca)
        if crl is None or crl.next_update_utc is None:
            return True
        now = now or dt.datetime.now(dt.UTC)
        life = crl.next_update_utc - crl.last_update_utc
        return crl.next_update_utc - now < life / 2

    def reload_broker(self) -> bool:
        """SIGHUP to the broker named in the pid file: it re-reads the CRL."""
        path = pid_file(self.settings)
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.warning("broker not reloaded (pid file %s): %s", path, exc)
            return False
        return True

    # ---------------------------------------------------------------- dynsec
    def kick(self, device_id: str, timeout: float = 5.0) -> bool:
        """Give the device the deny-all role: the broker closes its live session."""
        commands: list[dict[str, object]] = [
            {"command": "createClient", "username": device_id},
            {
                "command": "addClientRole",
                "username": device_id,
                "rolename": DENY_ROLE,
                "priority": 1000,
            },
        ]
        try:
            answer = dynsec_call(self.settings, self.ca, commands, timeout)
        except RevocationError as exc:
            log.error("device %s not kicked: %s", device_id, exc)
            return False
        errors = [r.get("error") for r in answer if r.get("command") == "addClientRole"]
        if errors and errors[0]:
            # the plugin answers "Internal error" when the client holds the role already
            try:
                if device_id in self.denied([device_id], timeout):
                    return True
            except RevocationError:
                pass
            log.error("device %s not kicked: %s", device_id, errors[0])
            return False
        return True

    def reapply(self) -> int:
        """After a broker reset, make sure every revoked device has the deny role again;
        only those that lack it are given it (how many)."""
        with self.sessions() as db:
            ids = list(db.scalars(select(RevokedDevice.device_id)).all())
        missing = [d for d in ids if d not in self.denied(ids)] if ids else []
        for device_id in missing:
            self.kick(device_id)
        return len(missing)

    def denied(self, device_ids: list[str], timeout: float = 5.0) -> set[str]:
        """Which of these devices hold the deny role in the broker's plugin now."""
        found: set[str] = set()
        for i in range(0, len(device_ids), 100):
            chunk = device_ids[i : i + 100]
            answer = dynsec_call(
                self.settings, self.ca,
                [{"command": "getClient", "username": d} for d in chunk], timeout,
            )  # fmt: skip
            for r in answer:
                data = r.get("data")
                client = data.get("client") if isinstance(data, dict) else None
                if isinstance(client, dict) and any(
                    isinstance(role, dict) and role.get("rolename") == DENY_ROLE
                    for role in client.get("roles") or []
                ):
                    found.add(str(client.get("username")))
        return found

    # ---------------------------------------------------------------- CRL upkeep
    def expire_superseded(self, now: float | None = None) -> int:
        """Certificates superseded by a renewal longer ago than the grace become revoked."""
        now = time.time() if now is None else now
        grace = self.settings.identity.supersede_grace_s
        with self.sessions.begin() as db:
            rows = db.execute(
                select(IssuedCertificate.serial, IssuedCertificate.device_id).where(
                    IssuedCertificate.superseded_at <= now - grace,
                    IssuedCertificate.revoked_at.is_(None),
                )
            ).all()
            if rows:
                db.execute(
                    update(IssuedCertificate)
                    .where(IssuedCertificate.serial.in_([r.serial for r in rows]))
                    .values(revoked_at=now)
                )
                for serial, device_id in rows:
                    audit.record(db, audit.SYSTEM, "cert.superseded", device_id,
                                 detail={"serial": serial})  # fmt: skip
        return len(rows)

    def crl_behind(self) -> bool:
        """True when the CRL on disk lacks a revoked, unexpired certificate (one revoked by
        a replacement enrollment in an EST worker, or a superseded one past its grace)."""
        crl = read_crl(self.ca)
        if crl is None:
            return True
        listed = {format(r.serial_number, "x") for r in crl}
        now = time.time()
        with self.sessions() as db:
            want = set(
                db.scalars(
                    select(IssuedCertificate.serial).where(
                        IssuedCertificate.revoked_at.is_not(None),
                        IssuedCertificate.not_after > now,
                    )
                ).all()
            )
        return not want <= listed

    def upkeep(self) -> bool:
        """One round of the keeper: supersede, then rewrite the CRL and reload the broker
        when it is behind the database or half its validity is gone. True if rewritten."""
        superseded = self.expire_superseded()
        if superseded or self.crl_behind() or self.crl_needs_refresh():
            self.write_crl()
            self.reload_broker()
            return True
        return False


def dynsec_call(
    settings: ServerSettings,
    ca: CertificateAuthority,
    commands: list[dict[str, object]],
    timeout: float,
) -> list[dict[str, object]]:
    """Send dynamic-security commands as the server identity; the broker's responses."""
    with _ADMIN_LOCK:  # one identity per process: two at once would take each other over
        return _dynsec_call(settings, ca, commands, timeout)


_ADMIN_LOCK = threading.Lock()


def _dynsec_call(
    settings: ServerSettings,
    ca: CertificateAuthority,
    commands: list[dict[str, object]],
    timeout: float,
) -> list[dict[str, object]]:
    got: list[bytes] = []
    ready = threading.Event()
    answered = threading.Event()
    # the process's administration identity, CN _<client id>-admin (server_identity.py)
    admin_id = f"{settings.mqtt.client_id}-admin"
    cert, key = server_identity.ensure(ca, admin_id, settings.identity.cert_days)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=server_identity.server_cn(admin_id),
        protocol=mqtt.MQTTv5,
    )
    client.tls_set(ca_certs=str(ca.root_cert_path), certfile=str(cert), keyfile=str(key))
    client.on_subscribe = lambda *_a: ready.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        answered.set()

    client.on_message = on_message
    try:
        client.connect(settings.mqtt.host, settings.mqtt.port, keepalive=30)
    except OSError as exc:
        raise RevocationError(f"broker not reachable: {exc}") from exc
    client.loop_start()
    try:
        client.subscribe(DYNSEC_TOPIC + "/response", 1)
        if not ready.wait(timeout):
            raise RevocationError("broker did not answer the subscription")
        client.publish(DYNSEC_TOPIC, json.dumps({"commands": commands}), qos=1)
        if not answered.wait(timeout):
            raise RevocationError("no answer from the dynamic-security plugin (is it loaded?)")
    finally:
        client.disconnect()
        client.loop_stop()
    try:
        responses = json.loads(got[0])["responses"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RevocationError(f"unreadable dynamic-security answer: {exc}") from exc
    return [r for r in responses if isinstance(r, dict)]


def _known(db: Session, device_id: str) -> bool:
    if db.get(Device, device_id) is not None:
        return True
    for table in (IssuedCertificate, EnrollmentToken):
        if db.scalars(select(table.device_id).where(table.device_id == device_id).limit(1)).first():
            return True
    return False


class CrlKeeper(threading.Thread):
    """Keeps the CRL fresh and in line with the database (superseded certificates past
    their grace, replacements), and the deny roles in place after a start."""

    def __init__(self, revoker: Revoker, every_s: float) -> None:
        super().__init__(name="crl-keeper", daemon=True)
        self.revoker = revoker
        self.every_s = every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        first = True
        while True:
            try:
                self.revoker.upkeep()
                if first and self.revoker.settings.identity.dynsec:
                    self.revoker.reapply()
                first = False
            except Exception:  # the keeper must outlive a DB or broker hiccup
                log.exception("CRL upkeep failed; retrying")
            if self.stopped.wait(self.every_s):
                return
