"""The ingest side of privacy: every image a device sends passes ``screen_events`` (snapshot
events) or ``screen_result`` (a ``snapshot`` command's answer) in the batch's transaction.

A refused image is removed from what is stored (the event stays, with ``image_refused``
and the reason instead of the image) and counted per device and reason; so a box with the
wrong policy, old masks or a false claim of anonymisation cannot get an image through.
A ``scene.problem`` event ``moved`` marks the camera's masks stale (images are refused
until someone confirms them).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.ingest import gate as ingest_gate
from fleet_server.ingest.events import Event
from fleet_server.privacy import policy, store

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "jpeg"  # a snapshot event's image (base64)
RESULT_KEY = "jpeg_b64"  # a snapshot command's image (base64)
MOVED = "moved"
# refused images are logged like refusals (issue 15): the first of a device and reason at
# once, then one summary per interval; a device sending a bad image in every event at its
# full budget no longer writes a log line each (the counts are in the database)
_REFUSAL_LOG = ingest_gate.RefusalLog()


def _decode(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


class _Cameras:
    """Each camera's policy read once per batch."""

    def __init__(self, db: Session) -> None:
        self.db = db
        self._seen: dict[str, policy.CameraPolicy] = {}

    def __call__(self, device_id: str) -> policy.CameraPolicy:
        cam = self._seen.get(device_id)
        if cam is None:
            cam = self._seen[device_id] = store.camera_policy(self.db, device_id)
        return cam

    def forget(self, device_id: str) -> None:
        self._seen.pop(device_id, None)


def _refuse(
    db: Session, data: dict[str, Any], key: str, device_id: str, cam: policy.CameraPolicy,
    reason: str, now: float,
) -> None:  # fmt: skip
    data.pop(key, None)
    data["image_refused"] = reason
    store.count_refusal(db, device_id, cam.site_id, reason, now)
    detail = f"image refused (site {cam.site_id}, policy {cam.policy})"
    _REFUSAL_LOG.note(ingest_gate.Refused("image_" + reason, device_id, detail), 0)


def screen_events(db: Session, rows: Sequence[dict[str, Any]], now: float) -> int:
    """Screen the images of a batch's event rows in place; how many were refused. Rows
    already stored (a redelivery) are left alone: ``store_events`` skips them."""
    cameras = _Cameras(db)
    for row in rows:  # a move first: the images after it in the batch are judged stale
        data = row["data"]
        if row["type"] == "scene.problem" and data.get("condition") == MOVED:
            if store.mark_stale(db, row["device_id"], now):
                log.warning("view of %s moved: its masks are stale until confirmed",
                            row["device_id"])  # fmt: skip
            cameras.forget(row["device_id"])
    with_images = [r for r in rows if SNAPSHOT_KEY in r["data"]]
    if not with_images:
        return 0
    ids = [r["event_id"] for r in with_images]
    devices = list({r["device_id"] for r in with_images})
    known = {
        (str(d), str(e))
        for d, e in db.execute(
            select(Event.device_id, Event.event_id).where(
                Event.event_id.in_(ids), Event.device_id.in_(devices)
            )
        ).all()
    }  # an event id is unique per device
    refused = 0
    for row in with_images:
        key = (row["device_id"], row["event_id"])
        if key in known:
            continue
        known.add(key)
        data = row["data"]
        cam = cameras(row["device_id"])
        reason = policy.screen(cam, _decode(data[SNAPSHOT_KEY]), data.get("privacy"))
        if reason:
            _refuse(db, data, SNAPSHOT_KEY, row["device_id"], cam, reason, now)
            refused += 1
    return refused


def screen_result(db: Session, device_id: str, body: dict[str, Any], now: float) -> bool:
    """Screen the image in a command's answer in place; True when it was refused."""
    result = body.get("result")
    if not isinstance(result, dict) or RESULT_KEY not in result:
        return False
    cam = store.camera_policy(db, device_id)
    reason = policy.screen(cam, _decode(result[RESULT_KEY]), result.get("privacy"))
    if not reason:
        return False
    _refuse(db, result, RESULT_KEY, device_id, cam, reason, now)
    return True
