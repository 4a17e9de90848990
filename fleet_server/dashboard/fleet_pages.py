"""Dashboard parts drawn from commissioning, certificates and events: the sites map, traffic
counts per site over time, and the device page's site, certificate, events and snapshot."""

from __future__ import annotations

import time
from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.dashboard import i18n
from fleet_server.dashboard.i18n import t
from fleet_server.dashboard.views import (
    DeviceSection,
    ExtraPage,
    Section,
)
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.events import Event, snapshot_url
from fleet_server.ingest.guard_pages import quarantine_section
from fleet_server.privacy import pages as privacy_pages
from fleet_server.receipts.api import delivery_section
from fleet_server.rollouts import pages as rollout_pages


def _when(ts: float | None) -> str:
    return i18n.when(ts)


def site_section(db: Session, device_id: str) -> Section | None:
    rec = db.scalars(
        select(Commissioning).where(Commissioning.device_id == device_id)
        .order_by(Commissioning.received_at.desc()).limit(1)
    ).first()  # fmt: skip
    if rec is None:
        return None
    site = db.get(Site, rec.site_id)
    name = site.name if site else rec.site_id
    pos = "" if site is None or site.lat is None else f" · {site.lat:.5f}, {site.lon:.5f}"
    frame = (
        f' · <a href="/api/devices/{escape(device_id)}/site/frame">'
        f"{escape(t('reference frame'))}</a>"
        if rec.reference_frame
        else ""
    )
    return Section(
        "Site",
        f'<p id="site"><a href="/ui/sites#{escape(rec.site_id)}">{escape(name)}</a>{pos}'
        + escape(
            t(" · commissioned {when} by {who}", when=_when(rec.received_at), who=rec.submitted_by)
        )
        + f"{frame}</p>",
    )


def certificate_section(db: Session, device_id: str) -> Section | None:
    cert = db.scalars(
        select(IssuedCertificate).where(IssuedCertificate.device_id == device_id)
        .order_by(IssuedCertificate.issued_at.desc()).limit(1)
    ).first()  # fmt: skip
    if cert is None:
        return None
    days = (cert.not_after - time.time()) / 86400
    state = t("revoked") if cert.revoked_at else t("{n} days left", n=f"{days:.0f}")
    text = t("serial {serial} · valid until {when} ({state}) · {via}", serial=cert.serial,
             when=_when(cert.not_after), state=state, via=cert.via)  # fmt: skip
    return Section("Certificate", f'<p id="certificate">{escape(text)}</p>')


def events_section(db: Session, device_id: str) -> Section | None:
    rows = db.scalars(
        select(Event).where(Event.device_id == device_id).order_by(Event.ts.desc()).limit(20)
    ).all()
    if not rows:
        return None
    snap = next((e for e in rows if isinstance((e.data or {}).get("jpeg"), str)), None)
    img = (
        f'<p><img id="snapshot" class="snapshot" alt="{escape(t("last snapshot"))}" '
        f'src="{escape(snapshot_url(snap.device_id, snap.event_id))}"></p>'
        if snap is not None
        else ""
    )
    cells = "".join(
        f"<tr><td>{i18n.since_html(e.ts)}</td><td>{escape(t(e.type))}</td>"
        f"<td>{escape(str(e.data.get('label', '') if e.data else ''))}</td></tr>"
        for e in rows
    )
    return Section(
        "Events",
        f'{img}<table id="events"><tr><th>{escape(t("when"))}</th><th>{escape(t("type"))}</th>'
        f"<th>{escape(t('what'))}</th></tr>{cells}</table>",
    )


SECTIONS: list[DeviceSection] = [site_section, certificate_section, events_section,
                                  delivery_section,  # issue 14: receipts, losses
                                  rollout_pages.update_section,
                                  privacy_pages.privacy_section,  # issue 20
                                  quarantine_section]  # issue 15  # fmt: skip
PAGES: list[ExtraPage] = [
    *rollout_pages.PAGES,  # issue 6: campaigns
    *privacy_pages.PAGES,  # issue 20: every site's snapshot policy
]
