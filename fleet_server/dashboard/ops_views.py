"""The operations pages under /ui: the sites map, traffic counts over time, the fleet's
events with their snapshots, one event by a stable link. Added to the dashboard router."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from html import escape
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.dashboard import charts, ops_data, sitemap
from fleet_server.dashboard.i18n import since_html, t, when
from fleet_server.dashboard.settings import DashboardSettings
from fleet_server.identity.model import Site
from fleet_server.ingest.events import Event, snapshot_url

Render = Callable[..., HTMLResponse]
SiteId = Annotated[str, Query(max_length=64, pattern=r"^[a-z0-9-]*$")]
DeviceQ = Annotated[str, Query(max_length=64)]


def add_ops_routes(
    router: APIRouter, sessions: sessionmaker[Session], render: Render, conf: DashboardSettings
) -> None:
    @router.get("/sites", response_class=HTMLResponse)
    def sites(
        z: Annotated[int | None, Query(ge=1, le=sitemap.MAX_Z)] = None,
        lat: Annotated[float | None, Query(ge=-85, le=85)] = None,
        lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
    ) -> HTMLResponse:
        with sessions() as db:
            marks = ops_data.site_marks(db)
            unplaced = [s for s in db.scalars(select(Site)).all() if s.lat is None]
        view = sitemap.fit(marks, 860, 540)
        if z is not None and lat is not None and lon is not None:
            view = sitemap.View(z, lat, lon)
        html = (f'<div id="map-live" data-live>{sitemap.render(marks, view, conf.tiles_url)}</div>'
                + _site_table(marks, len(unplaced)))  # fmt: skip
        return render("page.html", "/ui/sites", title=t("Sites"), content=html)

    @router.get("/counts", response_class=HTMLResponse)
    def counts(site: SiteId = "", days: Annotated[int, Query(ge=1, le=31)] = 1) -> HTMLResponse:
        now = time.time()
        with sessions() as db:
            rows = ops_data.count_rows(db, now - days * 86400, now, site)
            names = {s.site_id: s.name for s in db.scalars(select(Site)).all()}
        html = _counts_html(rows, names, now, days, site)
        return render("page.html", "/ui/counts", title=t("Traffic counts"), content=html)

    @router.get("/events", response_class=HTMLResponse)
    def events(
        site: SiteId = "", device: DeviceQ = "",
        label: Annotated[str, Query(max_length=64)] = "",
        type: Annotated[str, Query(max_length=64)] = "",
        hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> HTMLResponse:  # fmt: skip
        f = ops_data.EventFilter(site, device, label, type, time.time() - hours * 3600)
        with sessions() as db:
            found, total, where = ops_data.find_events(db, f, offset)
            names = {s.site_id: s.name for s in db.scalars(select(Site)).all()}
        query = {"site": site, "device": device, "label": label, "type": type, "hours": hours}
        html = _events_html(found, total, where, names, query, offset)
        return render("page.html", "/ui/events", title=t("Events"), content=html)

    @router.get("/events/{device_id}/{event_id}", response_class=HTMLResponse)
    def event(device_id: str, event_id: str) -> HTMLResponse:
        with sessions() as db:
            ev = db.scalars(
                select(Event).where(Event.device_id == device_id, Event.event_id == event_id)
            ).first()
            where = ops_data.site_of_devices(db, [ev.device_id]) if ev else {}
        if ev is None:
            raise HTTPException(status_code=404, detail=f"no event {event_id}")
        return render("page.html", "/ui/events", title=t("Event"),
                      content=_event_html(ev, where.get(ev.device_id, "")))  # fmt: skip


def event_href(device_id: str, event_id: str) -> str:
    """The stable link of one event (an event id is unique per device)."""
    quote = urllib.parse.quote
    return f"/ui/events/{quote(device_id, safe='')}/{quote(event_id, safe='')}"


def _site_table(marks: list[sitemap.Mark], unplaced: int) -> str:
    rows = "".join(
        f'<tr id="site-{escape(m.site_id)}"><td><a href="#pop-{escape(m.site_id)}">'
        f"{escape(m.site_id)}</a></td><td>{escape(m.name)}</td>"
        f"<td>{m.lat:.5f}, {m.lon:.5f}</td>"
        f'<td class="state state-{escape(m.state)}">{escape(t(m.state))}</td>'
        f"<td>{since_html(m.last_heartbeat)}</td><td>"
        + ", ".join(f'<a href="/ui/devices/{escape(d)}">{escape(d)}</a>' for d in m.devices)
        + "</td></tr>"
        for m in marks
    )
    empty = f'<tr><td colspan="6" class="muted">{escape(t("no sites"))}</td></tr>'
    note = (f'<p class="muted">{escape(t("{n} sites without a position", n=unplaced))}</p>'
            if unplaced else "")  # fmt: skip
    return (
        f'<h2>{escape(t("All sites"))}</h2>{note}<table id="sites"><tr>'
        f"<th>{escape(t('site'))}</th><th>{escape(t('name'))}</th>"
        f"<th>{escape(t('position'))}</th><th>{escape(t('state'))}</th>"
        f"<th>{escape(t('last heartbeat'))}</th><th>{escape(t('devices'))}</th></tr>"
        f"{rows or empty}</table>"
    )


def _counts_html(
    rows: list[ops_data.CountRow], names: dict[str, str], now: float, days: int, site: str
) -> str:
    bucket = 3600 if days <= 2 else 86400
    t0 = now - days * 86400
    export = urllib.parse.urlencode({"since": f"{t0:.0f}", "until": f"{now:.0f}",
                                     **({"site": site} if site else {})})  # fmt: skip
    tools = (
        '<p class="filters">'
        + " ".join(
            f'<a href="/ui/counts?{urllib.parse.urlencode({"days": d, "site": site})}" '
            f'class="{"here" if d == days else ""}">{escape(t("last {n} days", n=d))}</a>'
            for d in (1, 7, 31)
        )
        + f' · <a id="export-csv" href="/api/export/counts.csv?{export}">CSV</a>'
        f' · <a id="export-ngsi" href="/api/export/counts.ngsi-ld.json?{export}">NGSI-LD '
        f"TrafficFlowObserved</a></p>"
    )  # fmt: skip
    if not rows:
        return tools + (f'<p class="muted" id="no-counts">'
                        f'{escape(t("no counts in this period"))}</p>')  # fmt: skip
    per_site: dict[str, list[ops_data.CountRow]] = defaultdict(list)
    for r in rows:
        per_site[r.site_id or f"({r.device_id})"].append(r)
    parts = [tools]
    for sid in sorted(per_site):
        site_rows = per_site[sid]
        covered = {r.end - r.end % bucket for r in site_rows}  # buckets with data at all
        per_class: dict[str, dict[float, float]] = {}
        for r in site_rows:
            if r.kind == "line":
                into = per_class.setdefault(r.label, dict.fromkeys(covered, 0.0))
                into[r.end - r.end % bucket] += r.count
        series = [charts.Series(k, sorted(v.items())) for k, v in sorted(per_class.items())]
        unit = t("vehicles/h") if bucket == 3600 else t("vehicles/day")
        title = t("{site}: crossings", site=names.get(sid, sid))
        chart = charts.time_chart(title, series, unit, t0, now, gap_s=bucket * 1.5,
                                  chart_id=f"counts-{sid}")  # fmt: skip
        totals: dict[tuple[str, str, str], int] = defaultdict(int)
        for r in site_rows:
            totals[(r.line, r.label, r.direction)] += r.count
        cells = "".join(
            f"<tr><td>{escape(line)}</td><td>{escape(label)}</td>"
            f"<td>{escape(t('in zone') if d == 'enter' else d)}</td><td>{n}</td></tr>"
            for (line, label, d), n in sorted(totals.items())
        )
        parts.append(
            f'<h2 id="counts-site-{escape(sid)}">{escape(names.get(sid, sid))}</h2>'
            f'<div class="charts">{chart}</div><table class="counts"><tr>'
            f"<th>{escape(t('line / zone'))}</th><th>{escape(t('class'))}</th>"
            f"<th>{escape(t('direction'))}</th><th>{escape(t('total'))}</th></tr>{cells}</table>"
        )
    return "".join(parts)


def _thumb(ev: Event) -> str:
    if not isinstance((ev.data or {}).get("jpeg"), str):
        return ""
    return (f'<img class="thumb" loading="lazy" alt="{escape(t("snapshot"))}" '
            f'src="{escape(snapshot_url(ev.device_id, ev.event_id))}">')  # fmt: skip


def _events_html(
    found: list[Event], total: int, where: dict[str, str], names: dict[str, str],
    query: dict[str, object], offset: int,
) -> str:  # fmt: skip
    def field(name: str, hint: str) -> str:
        return (f'<input name="{name}" id="ev-{name}" value="{escape(str(query[name]))}" '
                f'placeholder="{escape(t(hint))}">')  # fmt: skip

    form = (
        '<form class="filters" method="get" action="/ui/events">'
        + field("site", "site id") + field("device", "device") + field("label", "class")
        + field("type", "type") + field("hours", "hours")
        + f'<button type="submit" id="ev-apply">{escape(t("filter"))}</button>'
        + f' <a href="/api/export/events.csv?{urllib.parse.urlencode(query)}" id="export-events">'
        "CSV</a></form>"
    )  # fmt: skip
    rows = []
    for ev in found:
        sid = where.get(ev.device_id, "")
        label = (ev.data or {}).get("label", "") if isinstance(ev.data, dict) else ""
        rows.append(
            f'<tr class="event-row"><td><a href="{escape(event_href(ev.device_id, ev.event_id))}">'
            f"{since_html(ev.ts)}</a></td><td>{escape(t(ev.type))}</td>"
            f"<td>{escape(str(label))}</td>"
            f'<td><a href="/ui/devices/{escape(ev.device_id)}">{escape(ev.device_id)}</a></td>'
            f"<td>{escape(names.get(sid, sid))}</td><td>{_thumb(ev)}</td></tr>"
        )
    empty = f'<tr><td colspan="6" class="muted">{escape(t("no events match"))}</td></tr>'
    nxt = ""
    if offset + len(found) < total:
        q = urllib.parse.urlencode({**query, "offset": offset + len(found)})
        nxt = f'<p><a id="next" href="/ui/events?{q}">{escape(t("next page"))}</a></p>'
    shown = t("{shown} of {total} shown", shown=len(found), total=total)
    return (
        form + f'<div id="events-live" data-live><p class="muted" id="shown">{escape(shown)}</p>'
        f'<table id="fleet-events"><tr><th>{escape(t("when"))}</th><th>{escape(t("type"))}</th>'
        f"<th>{escape(t('class'))}</th><th>{escape(t('device'))}</th>"
        f"<th>{escape(t('site'))}</th><th>{escape(t('snapshot'))}</th></tr>"
        + ("".join(rows) or empty) + f"</table>{nxt}</div>"
    )  # fmt: skip


def _event_html(ev: Event, site: str) -> str:
    data = {k: v for k, v in (ev.data or {}).items() if k != "jpeg"}
    img = _thumb(ev).replace('class="thumb"', 'class="snapshot"')
    return (
        f'<p id="event"><b>{escape(t(ev.type))}</b> · {escape(when(ev.ts))} · '
        f'<a href="/ui/devices/{escape(ev.device_id)}">{escape(ev.device_id)}</a>'
        + (f' · <a href="/ui/events?site={escape(site)}">{escape(site)}</a>' if site else "")
        + f"</p>{img}<pre>{escape(_json(data))}</pre>"
    )


def _json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
