"""REST endpoints for remote commands and desired device config."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.commands import store as commands
from fleet_server.commands.store import Command, CommandError, CommandName, DeviceConfig, Outgoing
from fleet_server.db import Device
from fleet_server.params import DeviceId

_BAD = "The message would break the protocol contract (e.g. too large)"
Operator = Annotated[Actor, Depends(require_role(OPERATOR))]


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: CommandName = Field(description="What the device should do")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments")
    timeout_s: float = Field(10.0, ge=0.5, le=300, description="Deadline for the answer, s")


class CommandOut(BaseModel):
    cid: str
    device_id: str
    cmd: str
    args: dict[str, Any]
    state: Literal["pending", "sent", "succeeded", "failed", "timed_out"]
    created_at: str
    deadline: str
    finished_at: str | None
    requested_by: str
    result: dict[str, Any] | None
    error: str | None


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="Settings for the device")


class ConfigOut(BaseModel):
    device_id: str
    version: int
    config: dict[str, Any]
    updated_at: str
    updated_by: str
    reported_version: int | None
    reported_ok: bool | None
    reported_error: str | None


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def command_out(c: Command) -> CommandOut:
    return CommandOut(
        cid=c.cid, device_id=c.device_id, cmd=c.cmd, args=c.args, state=c.state,
        created_at=_iso(c.created_at) or "", deadline=_iso(c.deadline) or "",
        finished_at=_iso(c.finished_at), requested_by=c.requested_by, result=c.result,
        error=c.error,
    )  # fmt: skip


def config_out(c: DeviceConfig) -> ConfigOut:
    return ConfigOut(
        device_id=c.device_id, version=c.version, config=c.config,
        updated_at=_iso(c.updated_at) or "", updated_by=c.updated_by,
        reported_version=c.reported_version, reported_ok=c.reported_ok,
        reported_error=c.reported_error,
    )  # fmt: skip


def _not_server_owned(config: dict[str, Any]) -> None:
    owned = sorted(set(config) & set(commands.SERVER_SECTIONS))
    if owned:
        raise HTTPException(status_code=400, detail=f"{owned} are set by the server (the "
                            "site's privacy policy and the camera's masks)")  # fmt: skip


def commands_router(sessions: sessionmaker[Session], send: Callable[[Outgoing], None]) -> APIRouter:
    router = APIRouter(
        tags=["commands"],
        dependencies=[Depends(require_role(*READERS))],
        responses=AUTH_RESPONSES,
    )

    def _known(db: Session, device_id: str) -> None:
        if db.get(Device, device_id) is None:
            raise HTTPException(status_code=404, detail=f"device {device_id} not found")

    @router.post(
        "/api/devices/{device_id}/commands",
        response_model=CommandOut,
        status_code=202,
        responses={
            404: {"description": "No such device"},
            400: {"description": _BAD},
            **AUTH_RESPONSES,
        },
    )
    def post_command(
        device_id: DeviceId,
        body: CommandIn,
        who: Operator,
        wait: Annotated[bool, Query(description="Answer only when the command is done")] = False,
    ) -> CommandOut:
        with sessions.begin() as db:
            _known(db, device_id)
            try:
                rec, out = commands.new_command(
                    db, device_id, body.cmd, body.args, body.timeout_s, who.name, time.time()
                )
            except CommandError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc
            cid = rec.cid
            audit.record(db, who, f"command.{body.cmd}", device_id, "sent",
                         {"cid": cid, "args": body.args})  # fmt: skip
        send(out)
        if wait:  # bounded by the command's own deadline (at most 300 s) plus a margin
            until = time.monotonic() + body.timeout_s + 2.0
            while time.monotonic() < until:
                with sessions() as db:
                    cur = db.get(Command, cid)
                    if cur is not None and cur.state not in commands.OPEN_STATES:
                        return command_out(cur)
                time.sleep(0.05)
        with sessions() as db:
            cur = db.get(Command, cid)
            if cur is None:
                raise HTTPException(status_code=404, detail=f"command {cid} vanished")
            return command_out(cur)

    @router.get(
        "/api/commands/{cid}",
        response_model=CommandOut,
        responses={404: {"description": "No such command"}},
    )
    def get_command(cid: Annotated[str, Path(min_length=3, max_length=40)]) -> CommandOut:
        with sessions() as db:
            cur = db.get(Command, cid)
            if cur is None:
                raise HTTPException(status_code=404, detail=f"command {cid} not found")
            return command_out(cur)

    @router.get("/api/devices/{device_id}/commands", response_model=list[CommandOut])
    def device_commands(
        device_id: DeviceId, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[CommandOut]:
        with sessions() as db:
            rows = db.scalars(
                select(Command).where(Command.device_id == device_id)
                .order_by(Command.created_at.desc()).limit(limit)
            ).all()  # fmt: skip
            return [command_out(c) for c in rows]

    @router.put(
        "/api/devices/{device_id}/config",
        response_model=ConfigOut,
        responses={
            404: {"description": "No such device"},
            400: {"description": _BAD},
            **AUTH_RESPONSES,
        },
    )
    def put_config(device_id: DeviceId, body: ConfigIn, who: Operator) -> ConfigOut:
        _not_server_owned(body.config)
        with sessions.begin() as db:
            _known(db, device_id)
            try:
                rec, out = commands.set_desired(db, device_id, body.config, who.name, time.time())
            except CommandError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from exc
            audit.record(db, who, "config.set", device_id, "ok", {"version": rec.version})
            result = config_out(rec)
        send(out)
        return result

    @router.get(
        "/api/devices/{device_id}/config",
        response_model=ConfigOut,
        responses={404: {"description": "No desired config for this device"}},
    )
    def get_config(device_id: DeviceId) -> ConfigOut:
        with sessions() as db:
            rec = db.get(DeviceConfig, device_id)
            if rec is None:
                raise HTTPException(status_code=404, detail=f"no config for {device_id}")
            return config_out(rec)

    return router
