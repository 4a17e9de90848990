"""Remote commands and desired config: records, the request/response bookkeeping.

A command is stored (pending), published on the device's cmd/req topic (sent) with the
MQTT v5 response topic and correlation data set (and the correlation id ``cid`` in the
payload for MQTT 3.1.1 nodes), and closed by the device's cmd/res (succeeded or failed) or
by its deadline (timed_out). Desired config is a retained, versioned message per device;
the device reports which version it applied.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy import JSON, Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from firmware import contract
from fleet_server.db import Base, Device

PENDING = "pending"
SENT = "sent"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
OPEN_STATES = (PENDING, SENT)

# Commands the fleet knows; a device may still refuse one it does not implement.
CommandName = Literal["ping", "reboot", "restart", "snapshot", "logs", "relay", "read_sensors"]
KNOWN: tuple[str, ...] = get_args(CommandName)


class CommandError(Exception):
    """A command that cannot be made or found."""


class Command(Base):
    __tablename__ = "commands"

    cid: Mapped[str] = mapped_column(String(40), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    cmd: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(String(512), nullable=True)


class DeviceConfig(Base):
    __tablename__ = "device_configs"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(64))
    reported_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reported_ok: Mapped[bool | None] = mapped_column(nullable=True)
    reported_error: Mapped[str | None] = mapped_column(String(512), nullable=True)
    reported_at: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass(frozen=True)
class Outgoing:
    """A message for the broker, built inside the transaction, published after it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation: bytes | None = None
    response_topic: str | None = None


def new_command(
    db: Session, device_id: str, cmd: str, args: dict[str, Any], timeout_s: float,
    who: str, now: float,
) -> tuple[Command, Outgoing]:  # fmt: skip
    if cmd not in KNOWN:
        raise CommandError(f"unknown command {cmd!r}; known: {', '.join(KNOWN)}")
    cid = "c-" + secrets.token_hex(8)
    deadline = now + timeout_s
    body = {"cid": cid, "cmd": cmd, "args": args, "deadline": deadline}
    try:
        topic, payload, qos, retain = contract.encode("cmd_req", device_id, body, now)
    except contract.ProtocolError as exc:
        raise CommandError(str(exc)) from exc
    rec = Command(cid=cid, device_id=device_id, cmd=cmd, args=args, state=SENT, created_at=now,
                  deadline=deadline, requested_by=who[:64])  # fmt: skip
    db.add(rec)
    out = Outgoing(topic, payload, qos, retain, cid.encode(), contract.topic(device_id, "cmd_res"))
    return rec, out


def apply_response(db: Session, device_id: str, body: dict[str, Any], now: float) -> str | None:
    """Close the command a cmd_res answers; the new state, or None when it answers nothing
    open (unknown cid, another device's cid, a second answer, or after the deadline)."""
    rec = db.get(Command, str(body["cid"]), with_for_update=True)
    if rec is None or rec.device_id != device_id or rec.state not in OPEN_STATES:
        return None
    rec.state = SUCCEEDED if body["ok"] else FAILED
    rec.finished_at = now
    result = body.get("result")
    rec.result = result if isinstance(result, dict) else None
    error = body.get("error")
    rec.error = str(error)[:512] if error is not None else None
    return rec.state


def expire(db: Session, now: float) -> list[str]:
    """Time out open commands past their deadline; their cids."""
    rows = db.scalars(
        select(Command)
        .where(Command.state.in_(OPEN_STATES), Command.deadline < now)
        .with_for_update(skip_locked=True)
    ).all()
    for rec in rows:
        dev = db.get(Device, rec.device_id)
        rec.state = TIMED_OUT
        rec.finished_at = now
        rec.error = (
            f"no answer before the deadline: the device is {dev.state}"
            if dev is not None and dev.state != "online"
            else "no answer before the deadline"
        )
    return [r.cid for r in rows]


# desired-config sections the server itself maintains (issue 20: the site's snapshot policy
# and the camera's masks); an operator's config keeps them
SERVER_SECTIONS = ("privacy",)


def set_desired(
    db: Session, device_id: str, config: dict[str, Any], who: str, now: float
) -> tuple[DeviceConfig, Outgoing]:
    rec = db.get(DeviceConfig, device_id, with_for_update=True)
    if rec is not None:
        kept = {k: rec.config[k] for k in SERVER_SECTIONS if k in rec.config and k not in config}
        config = {**config, **kept}
    version = 1 if rec is None else rec.version + 1
    try:
        topic, payload, qos, retain = contract.encode(
            "config_desired", device_id, {"version": version, "config": config}, now
        )
    except contract.ProtocolError as exc:
        raise CommandError(str(exc)) from exc
    if rec is None:
        rec = DeviceConfig(device_id=device_id, version=version, config=config, updated_at=now,
                           updated_by=who[:64])  # fmt: skip
        db.add(rec)
    else:
        rec.version, rec.config, rec.updated_at, rec.updated_by = version, config, now, who[:64]
    return rec, Outgoing(topic, payload, qos, retain)


def apply_report(db: Session, device_id: str, body: dict[str, Any], now: float) -> bool:
    """Record which desired-config version the device applied (or refused)."""
    rec = db.get(DeviceConfig, device_id, with_for_update=True)
    if rec is None or int(body["version"]) > rec.version:
        return False  # a report for a config this server never sent
    rec.reported_version = int(body["version"])
    rec.reported_ok = bool(body["ok"])
    error = body.get("error")
    rec.reported_error = str(error)[:512] if error is not None else None
    rec.reported_at = now
    return True
