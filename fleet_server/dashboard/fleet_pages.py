"""Dashboard parts drawn from commissioning, certificates and events: the sites map, traffic
counts per site over time, and the device page's site, certificate, events and snapshot."""

from __future__ import annotations

import time
from collections import defaultdict
from html import escape
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.dashboard import i18n, svg
from fleet_server.dashboard.i18n import t
from fleet_server.dashboard.views import (
    DeviceSection,
    ExtraPage,
    Section,
    degraded_ids,
    shown_state,
)
from fleet_server.db import Device
from fleet_server.identity.model import Commissioning, IssuedCertificate, Site
from fleet_server.ingest.api import sum_counts
from fleet_server.ingest.events import Event, snapshot_url
from fleet_server.receipts.api import delivery_section
from fleet_server.rollouts import pages as rollout_pages

COUNTS_WINDOW_S = 24 * 3600
COUNTS_BUCKET_S = 3600
_RANK = {"offline": 3, "degraded": 2, "unknown": 1, "online": 0}


def _when(ts: float | None) -> str:
    return i18n.when(ts)


def site_of_devices(db: Session) -> dict[str, str]:
    """device id -> site id, from each device's latest commissioning record."""
    out: dict[str, str] = {}
    rows = db.execute(
        select(Commissioning.device_id, Commissioning.site_id).order_by(Commissioning.received_at)
    ).all()
    for device_id, site_id in rows:
        out[str(device_id)] = str(site_id)
    return out


def sites_page(db: Session) -> tuple[str, str]:
    sites = db.scalars(select(Site).order_by(Site.site_id)).all()
    where = site_of_devices(db)
    degraded = degraded_ids(db)
    state: dict[str, str] = {}
    devices_at: dict[str, list[str]] = defaultdict(list)
    for dev in db.scalars(select(Device).where(Device.id.in_(list(where)))).all():
        site = where[dev.id]
        devices_at[site].append(dev.id)
        s = shown_state(dev, degraded)
        if _RANK.get(s, 1) >= _RANK.get(state.get(site, "online"), 0):
            state[site] = s
    points = [
        svg.MapPoint(
            s.name or s.site_id,
            s.lat,
            s.lon,
            state.get(s.site_id, "unknown"),
            f"/ui/sites#{s.site_id}",
        )
        for s in sites
        if s.lat is not None and s.lon is not None
    ]
    rows = "".join(
        _site_row(s, state.get(s.site_id, "unknown"), devices_at[s.site_id]) for s in sites
    )
    empty = f'<tr><td colspan="5" class="muted">{escape(t("no sites"))}</td></tr>'
    table = (
        f'<table id="sites"><tr><th>{escape(t("site"))}</th><th>{escape(t("name"))}</th>'
        f"<th>{escape(t('position'))}</th><th>{escape(t('state'))}</th>"
        f"<th>{escape(t('devices'))}</th></tr>{rows or empty}</table>"
    )
    return t("Sites"), svg.site_map(points) + f"<h2>{escape(t('All sites'))}</h2>" + table


def _site_row(site: Site, state: str, devices: list[str]) -> str:
    links = ", ".join(f'<a href="/ui/devices/{escape(d)}">{escape(d)}</a>' for d in sorted(devices))
    pos = "" if site.lat is None else f"{site.lat:.5f}, {site.lon:.5f}"
    return (
        f'<tr id="{escape(site.site_id)}"><td>{escape(site.site_id)}</td>'
        f"<td>{escape(site.name)}</td><td>{pos}</td>"
        f'<td class="state state-{escape(state)}">{escape(t(state))}</td><td>{links}</td></tr>'
    )


def counts_page(db: Session) -> tuple[str, str]:
    now = time.time()
    since = now - COUNTS_WINDOW_S
    where = site_of_devices(db)
    rows = db.execute(
        select(Event.device_id, Event.ts, Event.data).where(
            Event.type == "counts", Event.ts >= since
        )
    ).all()
    per_site: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for device_id, ts, data in rows:
        if isinstance(data, dict):
            per_site[where.get(str(device_id), f"(no site) {device_id}")].append((ts, data))
    if not per_site:
        return t("Traffic counts"), (
            f'<p class="muted" id="no-counts">{escape(t("no counts in the last day"))}</p>'
        )
    parts = []
    for site in sorted(per_site):
        entries = per_site[site]
        hourly: dict[float, int] = defaultdict(int)
        for ts, data in entries:
            lines, _zones = sum_counts([data])
            hourly[ts - ts % COUNTS_BUCKET_S] += _total(lines)
        lines, zones = sum_counts([d for _t, d in entries])
        chart = svg.line_chart(t("{site}: crossings per hour", site=site), sorted(hourly.items()))
        cells = "".join(
            f"<tr><td>{escape(line)}</td><td>{escape(label)}</td><td>{escape(direction)}</td>"
            f"<td>{n}</td></tr>"
            for line, per_class in sorted(lines.items())
            for label, per_dir in sorted(per_class.items())
            for direction, n in sorted(per_dir.items())
        )
        zone_cells = "".join(
            f"<tr><td>{escape(zone)}</td><td>{escape(label)}</td><td>{escape(t('in zone'))}</td>"
            f"<td>{n}</td></tr>"
            for zone, per_class in sorted(zones.items())
            for label, n in sorted(per_class.items())
        )
        parts.append(
            f'<h2>{escape(site)}</h2><div class="charts">{chart}</div>'
            f'<table class="counts"><tr><th>{escape(t("line / zone"))}</th>'
            f"<th>{escape(t('class'))}</th><th>{escape(t('direction'))}</th>"
            f"<th>{escape(t('last 24 h'))}</th></tr>{cells}{zone_cells}</table>"
        )
    return t("Traffic counts"), "".join(parts)


def _total(lines: dict[str, Any]) -> int:
    return sum(
        int(n) for per_class in lines.values() for per_dir in per_class.values()
        for n in per_dir.values()
    )  # fmt: skip


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
                                  rollout_pages.update_section]  # fmt: skip
PAGES: list[ExtraPage] = [
    ("/ui/sites", "Sites", sites_page),
    ("/ui/counts", "Traffic", counts_page),
    *rollout_pages.PAGES,  # issue 6: campaigns
]
