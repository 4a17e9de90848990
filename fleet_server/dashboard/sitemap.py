"""The sites map: Web-Mercator pixels at a whole zoom level, sites coloured by their worst
device state, clustered on a pixel grid when zoomed out, a popup per site (CSS :target, no
script). With a tile source (the province's own tile server, from config) the tiles are
drawn under the sites; without one, a projected grid of meridians and parallels with a
scale bar and a north arrow, so the map works offline. Pure: marks in, escaped markup out.
"""

from __future__ import annotations

import math
import urllib.parse
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from fleet_server.dashboard.i18n import since_html, t
from fleet_server.dashboard.svg import nice_step
from fleet_server.ingest.events import snapshot_url

TILE = 256
CELL = 44  # sites closer than this many pixels merge into one cluster
RANK = {"offline": 3, "degraded": 2, "unknown": 1, "online": 0}
MAX_Z = 18


@dataclass(frozen=True)
class Mark:
    site_id: str
    name: str
    lat: float
    lon: float
    state: str  # worst of its devices: offline, degraded, unknown, online
    devices: tuple[str, ...] = ()
    last_heartbeat: float | None = None
    snapshot: tuple[str, str, float] | None = None  # latest snapshot: device, event id, time


@dataclass(frozen=True)
class View:
    z: int
    lat: float
    lon: float


def world(lat: float, lon: float, z: int) -> tuple[float, float]:
    """Web-Mercator pixel coordinates at zoom ``z`` (latitude clamped to the projection)."""
    lat = max(-85.05, min(85.05, lat))
    n = TILE * 2**z
    x = (lon + 180.0) / 360.0 * n
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n
    return x, y


def fit(marks: Sequence[Mark], width: int, height: int, pad: int = 40) -> View:
    """The closest whole zoom at which every site fits, centred on them."""
    if not marks:
        return View(8, 21.12, 106.1)  # Bắc Ninh
    lats = [m.lat for m in marks]
    lons = [m.lon for m in marks]
    lat0, lat1, lon0, lon1 = min(lats), max(lats), min(lons), max(lons)
    mid = View(0, (lat0 + lat1) / 2, (lon0 + lon1) / 2)
    for z in range(MAX_Z, 0, -1):
        x0, y1 = world(lat0, lon0, z)
        x1, y0 = world(lat1, lon1, z)
        if x1 - x0 <= width - 2 * pad and y1 - y0 <= height - 2 * pad:
            return View(min(z, 16), mid.lat, mid.lon)
    return View(1, mid.lat, mid.lon)


def _worst(states: Sequence[str]) -> str:
    return max(states, key=lambda s: RANK.get(s, 1))


def _href(view: View) -> str:
    query = urllib.parse.urlencode(
        {"z": view.z, "lat": f"{view.lat:.5f}", "lon": f"{view.lon:.5f}"}
    )
    return f"/ui/sites?{query}#map"


def _grid(parts: list[str], view: View, ox: float, oy: float, width: int, height: int) -> None:
    deg_px = 360.0 / (TILE * 2**view.z)
    step = nice_step(deg_px * 110)
    lon = math.floor((view.lon - deg_px * width) / step) * step
    while lon <= view.lon + deg_px * width:
        x = world(view.lat, lon, view.z)[0] - ox
        if 0 <= x <= width:
            parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" class="grid"/>'
                         f'<text x="{x + 3:.1f}" y="{height - 4}" class="grid-label">'
                         f"{lon:.{_digits(step)}f}°E</text>")  # fmt: skip
        lon += step
    lat = math.floor((view.lat - deg_px * height) / step) * step
    while lat <= view.lat + deg_px * height:
        y = world(lat, view.lon, view.z)[1] - oy
        if 0 <= y <= height:
            parts.append(f'<line x1="0" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" class="grid"/>'
                         f'<text x="3" y="{y - 3:.1f}" class="grid-label">'
                         f"{lat:.{_digits(step)}f}°N</text>")  # fmt: skip
        lat += step


def _digits(step: float) -> int:
    return max(0, -math.floor(math.log10(step)))


def _tiles(parts: list[str], url: str, view: View, ox: float, oy: float, w: int, h: int) -> None:
    n = 2**view.z
    for ty in range(int(oy // TILE), int((oy + h) // TILE) + 1):
        for tx in range(int(ox // TILE), int((ox + w) // TILE) + 1):
            if 0 <= ty < n:
                src = url.replace("{z}", str(view.z)).replace("{x}", str(tx % n))
                src = src.replace("{y}", str(ty))
                parts.append(
                    f'<image href="{escape(src)}" x="{tx * TILE - ox:.0f}" '
                    f'y="{ty * TILE - oy:.0f}" width="{TILE}" height="{TILE}"/>'
                )


def render(
    marks: Sequence[Mark], view: View, tiles_url: str = "", width: int = 860, height: int = 540
) -> str:
    cx, cy = world(view.lat, view.lon, view.z)
    ox, oy = cx - width / 2, cy - height / 2
    parts = [f'<svg id="map" class="map" role="img" aria-label="{escape(t("site map"))}" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'data-zoom="{view.z}">']  # fmt: skip
    if tiles_url:
        _tiles(parts, tiles_url, view, ox, oy, width, height)
    else:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" class="land"/>')
        _grid(parts, view, ox, oy, width, height)
    cells: dict[tuple[int, int], list[tuple[Mark, float, float]]] = defaultdict(list)
    outside = 0
    for m in marks:
        x, y = world(m.lat, m.lon, view.z)
        x, y = x - ox, y - oy
        if not (-CELL <= x <= width + CELL and -CELL <= y <= height + CELL):
            outside += 1
            continue
        cells[(int((x + ox) // CELL), int((y + oy) // CELL))].append((m, x, y))
    for key in sorted(cells):
        group = cells[key]
        if len(group) == 1:
            m, x, y = group[0]
            parts.append(
                f'<a href="#pop-{escape(m.site_id)}" class="site-link">'
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" class="site {escape(m.state)}" '
                f'data-site="{escape(m.site_id)}"><title>{escape(m.name)} ({escape(t(m.state))})'
                f"</title></circle></a>"
            )
            continue
        x = sum(g[1] for g in group) / len(group)
        y = sum(g[2] for g in group) / len(group)
        lat = sum(g[0].lat for g in group) / len(group)
        lon = sum(g[0].lon for g in group) / len(group)
        ids = " ".join(escape(g[0].site_id) for g in group)
        state = _worst([g[0].state for g in group])
        r = 11 + 3 * math.log10(len(group))
        title = t("{n} sites, click to zoom in", n=len(group))
        into = escape(_href(View(min(view.z + 2, MAX_Z), lat, lon)))
        parts.append(
            f'<a href="{into}" class="cluster-link">'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" class="cluster {escape(state)}" '
            f'data-sites="{ids}"><title>{escape(title)}</title></circle>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" class="cluster-n">'
            f"{len(group)}</text></a>"
        )
    if not marks:
        parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
                     f'id="no-sites">{escape(t("no sites commissioned yet"))}</text>')  # fmt: skip
    m_px = 156543.03392 * math.cos(math.radians(view.lat)) / 2**view.z
    bar_m = nice_step(m_px * 120)
    bar_px = bar_m / m_px
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    parts.append(
        f'<rect x="10" y="{height - 34}" width="{bar_px + 20:.0f}" height="26" class="scale-bg"/>'
        f'<line x1="20" y1="{height - 14}" x2="{20 + bar_px:.1f}" y2="{height - 14}" '
        f'class="scale"/><text x="20" y="{height - 19}" id="map-scale">{label}</text>'
        f'<text x="{width - 24}" y="26" text-anchor="middle" class="north">N</text>'
        f'<line x1="{width - 24}" y1="54" x2="{width - 24}" y2="32" class="arrow"/></svg>'
    )
    zin = escape(_href(View(min(view.z + 1, MAX_Z), view.lat, view.lon)))
    zout = escape(_href(View(max(view.z - 1, 1), view.lat, view.lon)))
    zoom = (
        f'<p class="map-tools"><a id="zoom-in" href="{zin}">+</a> '
        f'<a id="zoom-out" href="{zout}">&#8722;</a> '
        f'<a id="zoom-fit" href="/ui/sites#map">{escape(t("all sites"))}</a>'
        + (f' <span class="muted">{escape(t("{n} sites outside this view", n=outside))}</span>'
           if outside else "")
        + "</p>"
    )  # fmt: skip
    return zoom + "".join(parts) + "".join(_popup(m) for m in marks)


def _popup(m: Mark) -> str:
    links = ", ".join(f'<a href="/ui/devices/{escape(d)}">{escape(d)}</a>' for d in m.devices)
    snap = f'<span class="muted">{escape(t("none"))}</span>'
    if m.snapshot is not None:
        device, event_id, ts = m.snapshot
        page = f"/ui/events/{quote(device, safe='')}/{quote(event_id, safe='')}"
        snap = (f'<a href="{escape(page)}"><img class="thumb" loading="lazy" '
                f'alt="{escape(t("last snapshot"))}" '
                f'src="{escape(snapshot_url(device, event_id))}"></a> '
                f"{since_html(ts)}")  # fmt: skip
    return (
        f'<div class="popup" id="pop-{escape(m.site_id)}"><a href="#map" class="close">&#215;</a>'
        f"<h3>{escape(m.name)}</h3>"
        f'<p><span class="state state-{escape(m.state)}">{escape(t(m.state))}</span>'
        f" · {escape(m.site_id)} · {m.lat:.5f}, {m.lon:.5f}</p>"
        f"<p>{escape(t('devices'))}: {links or '—'}</p>"
        f"<p>{escape(t('last heartbeat'))}: {since_html(m.last_heartbeat)}</p>"
        f"<p>{escape(t('last snapshot'))}: {snap}</p></div>"
    )
