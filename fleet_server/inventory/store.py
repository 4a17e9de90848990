"""Device tags and hardware inventory: the rules (pure) and the registry's SQL for them.

A tag is a short lowercase label an operator puts on devices to group them (``phase:1``,
``intersection``, ``district:north``); rollouts and the dashboard select devices by tags.
The hardware inventory is what a device said about its board in a heartbeat; the registry
keeps the latest, cleaned (``clean_hardware``) so that a device cannot fill the registry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from fleet_server.db import Device, DeviceTag

TAG_PATTERN = r"^[a-z0-9][a-z0-9:._-]{0,63}$"
_TAG_RE = re.compile(TAG_PATTERN)
MAX_TAGS_PER_DEVICE = 64
MAX_FILTER_TAGS = 16

# hardware inventory limits: keys, their count, and the length of a string value
_HW_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HW_MAX_KEYS = 32
_HW_MAX_STR = 128


class TagError(ValueError):
    """A tag that breaks the rule, or a set of tags too large."""


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise TagError(f"bad tag {tag!r}: lowercase letters, digits and ':._-', 1-64 chars")
    return tag


def check_tags(tags: Iterable[str]) -> list[str]:
    """The tags sorted and without repeats; TagError for a bad one or too many."""
    out = sorted({check_tag(t) for t in tags})
    if len(out) > MAX_TAGS_PER_DEVICE:
        raise TagError(f"at most {MAX_TAGS_PER_DEVICE} tags per device")
    return out


def clean_hardware(raw: object) -> dict[str, Any] | None:
    """The inventory to store, or None when there is nothing usable.

    Keeps scalar values (str, int, float, bool) under short snake_case keys; long strings
    are cut, nested values and odd keys are left out, at most 32 keys are kept.
    """
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for key in sorted(raw):
        if len(out) >= _HW_MAX_KEYS:
            break
        value = raw[key]
        if not isinstance(key, str) or not _HW_KEY_RE.match(key):
            continue
        if isinstance(value, str):
            out[key] = value[:_HW_MAX_STR]
        elif isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
            out[key] = value
    return out or None


def hardware_model(hardware: dict[str, Any] | None) -> str:
    """The board model for grouping ("unknown" when not reported)."""
    model = (hardware or {}).get("model")
    return model if isinstance(model, str) and model else "unknown"


# ---------------------------------------------------------------- queries
def filter_devices(
    query: Select[Any],
    tags: Sequence[str] = (),
    hardware: str | None = None,
    *,
    state: str | None = None,
    kind: str | None = None,
) -> Select[Any]:
    """Narrow a query on Device: every tag in ``tags``, a model containing ``hardware``
    (case-insensitive), and the ``state`` and ``kind`` given."""
    if state:
        query = query.where(Device.state == state)
    if kind:
        query = query.where(Device.kind == kind)
    for tag in tags:
        query = query.where(Device.id.in_(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
    if hardware:
        model = func.lower(Device.hardware["model"].as_string())
        query = query.where(model.contains(hardware.lower(), autoescape=True))
    return query


def tags_of(db: Session, device_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {d: [] for d in device_ids}
    if not device_ids:
        return found
    rows = db.execute(
        select(DeviceTag.device_id, DeviceTag.tag)
        .where(DeviceTag.device_id.in_(list(device_ids)))
        .order_by(DeviceTag.device_id, DeviceTag.tag)
    ).all()
    for device_id, tag in rows:
        found[str(device_id)].append(str(tag))
    return found


def set_tags(db: Session, device_id: str, tags: Sequence[str]) -> tuple[list[str], list[str]]:
    """Replace the device's tags; returns (added, removed)."""
    want = set(check_tags(tags))
    have = set(tags_of(db, [device_id])[device_id])
    added, removed = sorted(want - have), sorted(have - want)
    if removed:
        db.execute(
            delete(DeviceTag).where(DeviceTag.device_id == device_id, DeviceTag.tag.in_(removed))
        )
    db.add_all(DeviceTag(device_id=device_id, tag=t) for t in added)
    return added, removed


def add_tags(db: Session, device_id: str, tags: Sequence[str]) -> list[str]:
    """Add tags to a device; returns the ones that were new."""
    have = set(tags_of(db, [device_id])[device_id])
    new = [t for t in check_tags(tags) if t not in have]
    if len(have) + len(new) > MAX_TAGS_PER_DEVICE:
        raise TagError(f"at most {MAX_TAGS_PER_DEVICE} tags per device")
    db.add_all(DeviceTag(device_id=device_id, tag=t) for t in new)
    return new


def remove_tag(db: Session, device_id: str, tag: str) -> bool:
    result = db.execute(
        delete(DeviceTag).where(DeviceTag.device_id == device_id, DeviceTag.tag == check_tag(tag))
    )
    return bool(getattr(result, "rowcount", 0))


def tag_devices(db: Session, tag: str, device_ids: Sequence[str]) -> list[str]:
    """Put one tag on many devices; returns the ids that did not have it yet."""
    check_tag(tag)
    ids = sorted(set(device_ids))
    have = set(
        db.scalars(
            select(DeviceTag.device_id).where(DeviceTag.tag == tag, DeviceTag.device_id.in_(ids))
        ).all()
    )
    new = [d for d in ids if d not in have]
    db.add_all(DeviceTag(device_id=d, tag=tag) for d in new)
    return new


def tag_counts(db: Session) -> list[tuple[str, int]]:
    rows = db.execute(
        select(DeviceTag.tag, func.count()).group_by(DeviceTag.tag).order_by(DeviceTag.tag)
    ).all()
    return [(str(tag), int(n)) for tag, n in rows]
