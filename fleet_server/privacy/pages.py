"""The dashboard's privacy parts: the device page's section (the site's policy, the camera's
masks drawn over its commissioning reference frame or last snapshot, an editor), and the
page of every site's policy with its legal basis, retention and refused images.

The masks are drawn server-side as SVG over the image (they show without JavaScript); the
editor is ``masks.js`` (vanilla, a static file: the Content-Security-Policy allows no
inline script or style), which saves through the privacy API.
"""

from __future__ import annotations

import json
from html import escape

from fastapi import APIRouter
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from common import privacy
from common.privacy import STATIC
from fleet_server.dashboard import i18n
from fleet_server.dashboard.catalogue_vi import VI
from fleet_server.dashboard.i18n import t
from fleet_server.dashboard.views import ExtraPage, Section
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning, Site
from fleet_server.ingest.events import Event, snapshot_url
from fleet_server.privacy import store
from fleet_server.privacy.model import CameraMasks, SitePrivacy

POLICY_TEXT = {
    privacy.NONE: "no image leaves the box",
    privacy.ANONYMISED: "anonymised thumbnails only",
    privacy.FULL: "full images (legal basis on record)",
}
# this feature's strings in the dashboard's Vietnamese catalogue
VI.update({
    "Privacy": "Quyền riêng tư",
    "Privacy by site": "Quyền riêng tư theo địa điểm",
    "snapshot policy": "chính sách ảnh chụp",
    "no image leaves the box": "không ảnh nào rời khỏi thiết bị",
    "anonymised thumbnails only": "chỉ ảnh thu nhỏ đã ẩn danh",
    "full images (legal basis on record)": "ảnh đầy đủ (có căn cứ pháp lý)",
    "legal basis": "căn cứ pháp lý",
    "decided by {who} on {when}": "quyết định bởi {who} lúc {when}",
    "the default (never decided)": "mặc định (chưa quyết định)",
    "retention {n} days": "lưu giữ {n} ngày",
    "masks version {n}": "vùng che phiên bản {n}",
    "{p} privacy masks, {m} motion masks": "{p} vùng che riêng tư, {m} vùng bỏ qua chuyển động",
    "stale since the view moved: no image is accepted until someone confirms the masks":
        "hết hiệu lực do camera bị lệch: không nhận ảnh cho đến khi xác nhận lại vùng che",
    "images refused: {n}": "ảnh bị từ chối: {n}",
    "new privacy mask": "thêm vùng che riêng tư",
    "new motion mask": "thêm vùng bỏ qua chuyển động",
    "close polygon": "đóng đa giác",
    "undo": "hoàn tác",
    "save masks": "lưu vùng che",
    "confirm masks": "xác nhận vùng che",
    "no image to draw on yet": "chưa có ảnh để vẽ",
    "policy": "chính sách",
    "retention": "lưu giữ",
    "refused images": "ảnh bị từ chối",
    "decided": "quyết định",
    "{n} days": "{n} ngày",
    "default": "mặc định",
})  # fmt: skip


def _image_for(db: Session, device_id: str) -> str | None:
    """The commissioning reference frame (what masks are drawn on), else the last
    snapshot."""
    rec = db.scalars(
        select(Commissioning).where(Commissioning.device_id == device_id)
        .order_by(Commissioning.id.desc()).limit(1)
    ).first()  # fmt: skip
    if rec is not None and rec.reference_frame is not None:
        return f"/api/devices/{device_id}/site/frame"
    rows = db.scalars(
        select(Event).where(Event.device_id == device_id, Event.type == "snapshot")
        .order_by(Event.ts.desc()).limit(20)
    ).all()  # fmt: skip
    snap = next((e for e in rows if isinstance((e.data or {}).get("jpeg"), str)), None)
    return snapshot_url(snap.device_id, snap.event_id) if snap is not None else None


def masks_svg(masks: dict[str, list[list[list[float]]]]) -> str:
    """The masks as SVG polygons in a 0..1 view box (stretched over the image)."""
    shapes = []
    for kind in privacy.MASK_KINDS:
        for poly in masks.get(kind, []):
            pts = " ".join(f"{x:.4f},{y:.4f}" for x, y in poly)
            shapes.append(f'<polygon class="mask mask-{kind}" points="{pts}"/>')
    return (
        '<svg class="mask-layer" viewBox="0 0 1 1" preserveAspectRatio="none" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(shapes)}</svg>'
    )


def privacy_section(db: Session, device_id: str) -> Section | None:
    dev = db.get(Device, device_id)
    if dev is None or dev.kind != "agent":
        return None
    cam = store.camera_policy(db, device_id)
    row = db.get(CameraMasks, device_id)
    masks = row.masks if row is not None else privacy.check_masks(None)
    refused = sum(r.count for r in store.refusals(db, [device_id]))
    text = POLICY_TEXT.get(cam.policy, "")
    counts = t("{p} privacy masks, {m} motion masks", p=len(masks.get("privacy", [])),
               m=len(masks.get("motion", [])))  # fmt: skip
    lines = [
        f"{escape(t('snapshot policy'))}: <b>{escape(cam.policy)}</b> ({escape(t(text))})",
        escape(t("masks version {n}", n=cam.masks_version)) + " · " + escape(counts),
        escape(t("images refused: {n}", n=refused)),
    ]
    if cam.stale:
        msg = "stale since the view moved: no image is accepted until someone confirms the masks"
        lines.append(f'<span class="state state-offline">{escape(t(msg))}</span>')
    image = _image_for(db, device_id)
    figure = (
        f'<div class="mask-figure"><img class="mask-image" alt="" src="{escape(image)}">'
        f"{masks_svg(masks)}</div>"
        if image is not None
        else f'<p class="muted">{escape(t("no image to draw on yet"))}</p>'
    )
    buttons = "".join(
        f'<button data-mask-action="{a}">{escape(t(label))}</button> '
        for a, label in [("new-privacy", "new privacy mask"), ("new-motion", "new motion mask"),
                         ("close", "close polygon"), ("undo", "undo"), ("save", "save masks"),
                         ("confirm", "confirm masks")]
    )  # fmt: skip
    html = (
        '<link rel="stylesheet" href="/ui/privacy/masks.css">'
        f'<div id="mask-editor" data-device="{escape(device_id)}" '
        f'data-masks="{escape(json.dumps(masks))}" data-version="{cam.masks_version}">'
        f'<p id="privacy">{"<br>".join(lines)}</p>{figure}<p>{buttons}</p>'
        '<p id="mask-msg" class="muted"></p></div>'
        '<script src="/ui/privacy/masks.js" defer></script>'
    )
    return Section("Privacy", html)


def privacy_page(db: Session) -> tuple[str, str]:
    sites = db.scalars(select(Site).order_by(Site.site_id)).all()
    decided = {r.site_id: r for r in db.scalars(select(SitePrivacy)).all()}
    rows = []
    for site in sites:
        view = store.site_view(db, site.site_id)
        devices = store.devices_at(db, site.site_id)
        refused = sum(r.count for r in store.refusals(db, devices))
        row = decided.get(site.site_id)
        who = (
            escape(t("decided by {who} on {when}", who=row.decided_by,
                     when=i18n.when(row.decided_at)))
            if row is not None else escape(t("the default (never decided)"))
        )  # fmt: skip
        days = view.retention_days
        rows.append(
            f'<tr id="privacy-{escape(site.site_id)}"><td>{escape(site.site_id)}</td>'
            f"<td><b>{escape(view.policy)}</b><br>{escape(t(POLICY_TEXT[view.policy]))}</td>"
            f"<td>{escape(view.legal_basis or '—')}</td><td>{who}</td>"
            f"<td>{escape(t('{n} days', n=days) if days else t('default'))}</td>"
            f"<td>{refused}</td></tr>"
        )
    head = "".join(
        f"<th>{escape(t(h))}</th>"
        for h in ("site", "policy", "legal basis", "decided", "retention", "refused images")
    )
    body = "".join(rows) or f'<tr><td colspan="6" class="muted">{escape(t("no sites"))}</td></tr>'
    return t("Privacy by site"), f'<table id="privacy-sites"><tr>{head}</tr>{body}</table>'


def static_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/privacy/masks.js")
    def masks_js() -> FileResponse:
        return FileResponse(STATIC / "masks.js", media_type="text/javascript")

    @router.get("/ui/privacy/masks.css")
    def masks_css() -> FileResponse:
        return FileResponse(STATIC / "masks.css", media_type="text/css")

    return router


PAGES: list[ExtraPage] = [("/ui/privacy", "Privacy", privacy_page)]
