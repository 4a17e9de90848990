"""Inline SVG for the dashboard: line charts and a site map, built from plain numbers.

Pure functions returning markup (escaped); no I/O, no third-party assets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def line_chart(
    title: str, points: Sequence[tuple[float, float]], unit: str = "",
    width: int = 480, height: int = 140,
) -> str:  # fmt: skip
    """A small time-series chart; ``points`` are (unix time, value), any order."""
    pad_l, pad_r, pad_t, pad_b = 44, 8, 20, 18
    label = escape(title)
    if not points:
        return (
            f'<svg class="chart" role="img" aria-label="{label}: no data" width="{width}" '
            f'height="{height}"><text x="8" y="16">{label}</text>'
            f'<text x="8" y="{height // 2}" class="muted">no data yet</text></svg>'
        )
    pts = sorted(points)
    t0, t1 = pts[0][0], pts[-1][0]
    values = [v for _, v in pts]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    span_t = max(t1 - t0, 1e-9)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: float, v: float) -> str:
        x = pad_l + (t - t0) / span_t * w if len(pts) > 1 else pad_l + w / 2
        y = pad_t + (hi - v) / (hi - lo) * h
        return f"{_fmt(x)},{_fmt(y)}"

    path = " ".join(xy(t, v) for t, v in pts)
    last = values[-1]
    unit_s = escape(unit)
    return (
        f'<svg class="chart" role="img" aria-label="{label}" width="{width}" height="{height}">'
        f'<text x="8" y="14">{label}</text>'
        f'<text x="{width - 8}" y="14" text-anchor="end">{last:.4g}{unit_s}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" class="muted">{hi:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end" class="muted">{lo:.4g}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" class="frame"/>'
        f'<polyline points="{path}" class="line"/></svg>'
    )


@dataclass(frozen=True)
class MapPoint:
    label: str
    lat: float
    lon: float
    state: str  # online, offline, degraded, unknown
    href: str


def site_map(points: Sequence[MapPoint], width: int = 720, height: int = 460) -> str:
    """Sites placed by latitude and longitude (equirectangular, scaled to their bounds,
    with a north arrow and a scale bar); no tiles, works offline."""
    if not points:
        return (
            f'<svg class="map" role="img" aria-label="site map: no sites" width="{width}" '
            f'height="{height}"><text x="16" y="32">no sites commissioned yet</text></svg>'
        )
    pad = 40
    lats = [p.lat for p in points]
    lons = [p.lon for p in points]
    mid_lat = math.radians((max(lats) + min(lats)) / 2)
    kx = math.cos(mid_lat)  # a degree of longitude is shorter away from the equator
    span_x = max((max(lons) - min(lons)) * kx, 1e-4)
    span_y = max(max(lats) - min(lats), 1e-4)
    scale = min((width - 2 * pad) / span_x, (height - 2 * pad) / span_y)
    ox = pad + ((width - 2 * pad) - span_x * scale) / 2
    oy = pad + ((height - 2 * pad) - span_y * scale) / 2
    parts = [
        f'<svg class="map" role="img" aria-label="site map" width="{width}" height="{height}">',
        f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" class="frame"/>',
        f'<text x="{width - 24}" y="28" text-anchor="middle">N</text>',
        f'<line x1="{width - 24}" y1="56" x2="{width - 24}" y2="34" class="arrow"/>',
    ]
    km_per_px = 111.32 / scale  # a degree of latitude is ~111.32 km
    bar_km = nice_step(km_per_px * 120)
    bar_px = bar_km / km_per_px
    parts.append(
        f'<line x1="16" y1="{height - 16}" x2="{_fmt(16 + bar_px)}" y2="{height - 16}" '
        f'class="scale"/><text x="16" y="{height - 22}">{bar_km:g} km</text>'
    )
    for p in sorted(points, key=lambda q: q.label):
        x = ox + (p.lon - min(lons)) * kx * scale
        y = oy + (max(lats) - p.lat) * scale
        name = escape(p.label)
        parts.append(
            f'<a href="{escape(p.href)}"><circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="6" '
            f'class="site {escape(p.state)}"><title>{name} ({escape(p.state)})</title></circle>'
            f'<text x="{_fmt(x + 9)}" y="{_fmt(y + 4)}" class="site-label">{name}</text></a>'
        )
    parts.append("</svg>")
    return "".join(parts)


def nice_step(x: float) -> float:
    """1, 2 or 5 times a power of ten, not above x (for a scale bar)."""
    if x <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * power <= x:
            return float(m * power)
    return float(power)
