"""Retention and data-subject requests over the API: run the retention now, export a site's
images of a time range as one archive (tar: the JPEGs and a manifest), erase them. Each is
audited with its counts."""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.access import audit
from fleet_server.access.audit import Actor
from fleet_server.access.auth import AUTH_RESPONSES, OPERATOR, require_role
from fleet_server.ingest.events import Event
from fleet_server.privacy import retention
from fleet_server.privacy.api import SiteId
from fleet_server.privacy.settings import PrivacySettings

Operator = Annotated[Actor, Depends(require_role(OPERATOR))]
Since = Annotated[float, Query(ge=0, description="From (Unix time, included)")]
Until = Annotated[float, Query(ge=0, description="Until (Unix time, excluded)")]


class RetentionOut(BaseModel):
    deleted: dict[str, int] = Field(description="site -> events deleted ('-': no site)")


class ErasedOut(BaseModel):
    site_id: str
    images: int = Field(description="Images removed")


def run_retention(sessions: sessionmaker[Session], settings: PrivacySettings, now: float,
                  who: Actor = audit.SYSTEM, rounds: int = 1000) -> dict[str, int]:  # fmt: skip
    """Delete everything past retention, one batch a transaction; {site: deleted}."""
    total: dict[str, int] = {}
    for _ in range(rounds):
        with sessions.begin() as db:
            got = retention.apply_retention(db, now, settings.retention_days,
                                            settings.retention_batch, who)  # fmt: skip
        for site, n in got.items():
            total[site] = total.get(site, 0) + n
        if sum(got.values()) < settings.retention_batch:
            break
    return total


def export_archive(events: list[Event], site_id: str, since: float, until: float) -> bytes:
    buf = io.BytesIO()
    manifest = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ev in events:
            image = retention.image_bytes(ev)
            name = f"{ev.device_id}/{ev.event_id}.jpg"
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(image), int(ev.ts)
            tar.addfile(info, io.BytesIO(image))
            meta = {k: v for k, v in (ev.data or {}).items() if k != retention.IMAGE_KEY}
            manifest.append({"file": name, "event_id": ev.event_id, "device_id": ev.device_id,
                             "ts": ev.ts, "data": meta})  # fmt: skip
        data = json.dumps({"site_id": site_id, "since": since, "until": until,
                           "images": manifest}, indent=1).encode()  # fmt: skip
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def subject_router(sessions: sessionmaker[Session], settings: PrivacySettings) -> APIRouter:
    router = APIRouter(tags=["privacy"], responses=AUTH_RESPONSES)

    @router.post("/api/privacy/retention", response_model=RetentionOut)
    def retention_now(who: Operator) -> RetentionOut:
        return RetentionOut(deleted=run_retention(sessions, settings, time.time(), who))

    @router.get("/api/sites/{site_id}/images.tar", response_class=Response,
                responses={200: {"content": {"application/x-tar": {}}}})  # fmt: skip
    def export(site_id: SiteId, since: Since, until: Until, who: Operator) -> Response:
        with sessions.begin() as db:
            found = retention.site_images(db, site_id, since, until, settings.export_max_images)
            audit.record(db, who, "privacy.export", site_id, "ok",
                         {"since": since, "until": until, "images": len(found)})  # fmt: skip
        archive = export_archive(found, site_id, since, until)
        name = f"{site_id}-{int(since)}-{int(until)}.tar"
        return Response(archive, media_type="application/x-tar",
                        headers={"Content-Disposition": f'attachment; filename="{name}"',
                                 "X-Images": str(len(found))})  # fmt: skip

    @router.delete("/api/sites/{site_id}/images", response_model=ErasedOut)
    def erase(site_id: SiteId, since: Since, until: Until, who: Operator) -> ErasedOut:
        with sessions.begin() as db:
            n = retention.erase_images(db, site_id, since, until, who,
                                       settings.export_max_images)  # fmt: skip
        return ErasedOut(site_id=site_id, images=n)

    return router
