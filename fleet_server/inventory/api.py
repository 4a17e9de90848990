"""REST API for device tags: set, add, remove, bulk-tag by list or filter; list tags.

Changes need the operator role (admin passes); each one is audit-logged in its own
transaction, and a refusal (unknown device) gets an entry too. A bad tag is a 422 from the
declared pattern before anything is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, READERS, require_role
from fleet_server.db import Device
from fleet_server.inventory import store as inventory
from fleet_server.inventory.store import MAX_FILTER_TAGS, MAX_TAGS_PER_DEVICE, TAG_PATTERN
from fleet_server.params import DEVICE_ID_PATTERN, DeviceId

TagText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=TAG_PATTERN)]
TagPath = Annotated[str, Path(min_length=1, max_length=64, pattern=TAG_PATTERN, description="Tag")]
DeviceIdText = Annotated[str, StringConstraints(max_length=64, pattern=DEVICE_ID_PATTERN)]
MAX_BULK = 10_000
Writer = Annotated[Actor, Depends(require_role(OPERATOR))]  # operators and admins change tags

# a change of one device's tags, in the caller's transaction: (added, removed)
_Change = Callable[[Session], tuple[list[str], list[str]]]


class _UnknownDevice(Exception):
    pass


class _NoTag(Exception):
    pass


_NOT_FOUND = {404: {"description": "No such device"}, **AUTH_RESPONSES}


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[TagText] = Field(max_length=MAX_TAGS_PER_DEVICE, description="Tags")


class TagsOut(BaseModel):
    device_id: str = Field(description="Device id")
    tags: list[str] = Field(description="The device's tags after the change, sorted")
    added: list[str] = Field(description="Tags the change added")
    removed: list[str] = Field(description="Tags the change removed")


class DeviceSelector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["online", "offline", "unknown"] | None = Field(None, description="State")
    kind: Literal["agent", "node"] | None = Field(None, description="Device kind")
    tags: list[TagText] = Field([], max_length=MAX_FILTER_TAGS, description="All these tags")
    hardware: str | None = Field(None, min_length=1, max_length=64, description="Board model part")


class BulkTagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: list[DeviceIdText] | None = Field(
        None, max_length=MAX_BULK, description="Device ids (all must exist)"
    )
    filter: DeviceSelector | None = Field(None, description="Or: every device matching this")

    @model_validator(mode="after")
    def _one_of(self) -> BulkTagIn:
        if (self.devices is None) == (self.filter is None):
            raise ValueError("give either 'devices' or 'filter'")
        return self


class BulkTagOut(BaseModel):
    tag: str = Field(description="The tag")
    matched: int = Field(description="Devices selected")
    added: int = Field(description="Devices that did not have the tag before")


class TagCount(BaseModel):
    tag: str = Field(description="The tag")
    devices: int = Field(description="Devices carrying it")


def _selected(db: Session, sel: DeviceSelector) -> list[str]:
    query = inventory.filter_devices(
        select(Device.id), sel.tags, sel.hardware, state=sel.state, kind=sel.kind
    ).order_by(Device.id)
    return [str(d) for d in db.scalars(query.limit(MAX_BULK + 1)).all()]


def _bulk_targets(db: Session, body: BulkTagIn) -> tuple[list[str], list[str], dict[str, Any]]:
    """(ids selected, ids listed that do not exist, how they were chosen for the audit)."""
    if body.devices is not None:
        ids = sorted(set(body.devices))
        known = set(db.scalars(select(Device.id).where(Device.id.in_(ids))).all())
        return ids, [d for d in ids if d not in known], {"devices": len(ids)}
    sel = body.filter or DeviceSelector()  # the validator made sure there is a filter
    return _selected(db, sel), [], {"filter": sel.model_dump(exclude_none=True)}


def tags_router(sessions: sessionmaker[Session]) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["tags"])

    def refuse_unknown(who: Actor, action: str, device_id: str) -> HTTPException:
        audit.record_now(sessions, who, action, device_id, "refused:unknown_device")
        return HTTPException(404, f"device {device_id} not found")

    def change(
        who: Actor, action: str, device_id: str, apply: _Change, detail: dict[str, Any]
    ) -> TagsOut:
        try:
            with sessions.begin() as db:
                if db.get(Device, device_id) is None:
                    raise _UnknownDevice(device_id)
                added, removed = apply(db)
                audit.record(db, who, action, device_id,
                             detail={**detail, "added": added, "removed": removed})  # fmt: skip
                db.flush()
                now = inventory.tags_of(db, [device_id])[device_id]
        except _UnknownDevice:
            raise refuse_unknown(who, action, device_id) from None
        except inventory.TagError as exc:
            audit.record_now(sessions, who, action, device_id, "refused:bad_tags")
            raise HTTPException(422, str(exc)) from None
        return TagsOut(device_id=device_id, tags=now, added=added, removed=removed)

    @router.put("/devices/{device_id}/tags", response_model=TagsOut, responses=_NOT_FOUND)
    def put_tags(device_id: DeviceId, body: TagsIn, who: Writer) -> TagsOut:
        """Replace the device's set of tags."""
        return change(who, "device.tags.set", device_id,
                      lambda db: inventory.set_tags(db, device_id, body.tags), {})  # fmt: skip

    @router.post("/devices/{device_id}/tags", response_model=TagsOut, responses=_NOT_FOUND)
    def add_tags(device_id: DeviceId, body: TagsIn, who: Writer) -> TagsOut:
        """Add tags to the device (those it has stay)."""

        def apply(db: Session) -> tuple[list[str], list[str]]:
            return inventory.add_tags(db, device_id, body.tags), []

        return change(who, "device.tags.add", device_id, apply, {})

    @router.delete(
        "/devices/{device_id}/tags/{tag}",
        response_model=TagsOut,
        responses={404: {"description": "No such device, or it has no such tag"},
                   **AUTH_RESPONSES},
    )  # fmt: skip
    def remove_tag(device_id: DeviceId, tag: TagPath, who: Writer) -> TagsOut:
        """Take one tag off the device."""

        def apply(db: Session) -> tuple[list[str], list[str]]:
            if not inventory.remove_tag(db, device_id, tag):
                raise _NoTag(tag)
            return [], [tag]

        try:
            return change(who, "device.tags.remove", device_id, apply, {"tag": tag})
        except _NoTag:
            audit.record_now(sessions, who, "device.tags.remove", device_id, "refused:no_tag",
                             {"tag": tag})  # fmt: skip
            raise HTTPException(404, f"device {device_id} has no tag {tag}") from None

    @router.post(
        "/tags/{tag}/devices",
        response_model=BulkTagOut,
        responses={404: {"description": "A listed device does not exist"},
                   413: {"description": "The filter matches too many devices"},
                   **AUTH_RESPONSES},
    )  # fmt: skip
    def bulk_tag(tag: TagPath, body: BulkTagIn, who: Writer) -> BulkTagOut:
        """Put one tag on a list of devices, or on every device a filter selects."""
        with sessions.begin() as db:
            ids, unknown, how = _bulk_targets(db, body)
            if not unknown and len(ids) <= MAX_BULK:
                added = inventory.tag_devices(db, tag, ids)
                audit.record(db, who, "tag.bulk_add", tag,
                             detail={**how, "matched": len(ids), "added": len(added)})  # fmt: skip
        if unknown:
            audit.record_now(sessions, who, "tag.bulk_add", tag, "refused:unknown_device",
                             {"unknown": unknown[:20]})  # fmt: skip
            raise HTTPException(404, f"unknown devices: {', '.join(unknown[:20])}")
        if len(ids) > MAX_BULK:
            audit.record_now(sessions, who, "tag.bulk_add", tag, "refused:too_many", how)
            raise HTTPException(413, f"the filter matches more than {MAX_BULK} devices")
        return BulkTagOut(tag=tag, matched=len(ids), added=len(added))

    @router.get(
        "/tags",
        response_model=list[TagCount],
        dependencies=[Depends(require_role(*READERS))],
        responses=AUTH_RESPONSES,
    )
    def list_tags() -> list[TagCount]:
        """Every tag in use and how many devices carry it."""
        with sessions() as db:
            return [TagCount(tag=t, devices=n) for t, n in inventory.tag_counts(db)]

    return router
