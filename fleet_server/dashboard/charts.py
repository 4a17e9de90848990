"""Time-series charts as inline SVG: a time axis with local-time labels, a value axis with
its unit, gaps in the data drawn as gaps, a lone point drawn as a dot, several series with
a legend. Pure: numbers in, escaped markup out."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from fleet_server.dashboard.i18n import current, local, num, t

# tick spacings for the time axis, seconds
_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)
COLOURS = ("#1f5fa8", "#c0392b", "#2e8b57", "#b26a00", "#7b3fa0", "#00838f", "#5d4037")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (unix time, value)


def nice_ceiling(x: float) -> float:
    if x <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= x:
            return float(m * power)
    return float(10 * power)


def time_ticks(t0: float, t1: float, most: int = 7) -> list[float]:
    """Tick times at a round local-time spacing, at most ``most`` of them."""
    span = max(t1 - t0, 1.0)
    step = next((s for s in _STEPS if span / s <= most), _STEPS[-1])
    start = local(t0)
    if step >= 86400:
        first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        secs = start.hour * 3600 + start.minute * 60 + start.second
        first = start.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(
            seconds=secs - secs % step
        )
    ticks: list[float] = []
    at = first
    while at.timestamp() <= t1 and len(ticks) < 50:
        if at.timestamp() >= t0:
            ticks.append(at.timestamp())
        at = at + dt.timedelta(seconds=step)
        if step >= 86400:  # whole local days, whatever the offset does
            at = at.replace(hour=0)
    return ticks


def _tick_label(ts: float, span: float) -> str:
    d = local(ts)
    if span > 2 * 86400:
        return d.strftime("%d/%m") if current().lang == "vi" else d.strftime("%m-%d")
    return d.strftime("%H:%M")


def runs(points: Sequence[tuple[float, float]], gap_s: float) -> list[list[tuple[float, float]]]:
    """Split time-sorted points where two neighbours are further apart than ``gap_s``."""
    out: list[list[tuple[float, float]]] = []
    for p in sorted(points):
        if out and p[0] - out[-1][-1][0] <= gap_s:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def time_chart(
    title: str, series: Sequence[Series], unit: str, t0: float, t1: float, gap_s: float,
    width: int = 560, height: int = 200, chart_id: str = "",
) -> str:  # fmt: skip
    """``t0``..``t1`` is the time axis; points further apart than ``gap_s`` are not joined."""
    pad_l, pad_r, pad_t, pad_b = 52, 12, 24, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    label = escape(title)
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    values = [v for s in series for _, v in s.points]
    head = (
        f'<svg class="chart"{ident} role="img" aria-label="{label}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><text x="8" y="15">{label}</text>'
    )
    if not values:
        return (head + f'<text x="{pad_l}" y="{pad_t + h // 2}" class="muted">'
                f'{escape(t("no data yet"))}</text></svg>')  # fmt: skip
    lo = min(0.0, *values)
    hi = nice_ceiling(max(values)) if max(values) > lo else lo + 1
    span_t = max(t1 - t0, 1.0)

    def x(ts: float) -> float:
        return pad_l + (ts - t0) / span_t * w

    def y(v: float) -> float:
        return pad_t + (hi - v) / (hi - lo) * h

    parts = [head, f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" class="frame"/>']
    for i in range(5):  # value grid and labels, with the unit
        v = lo + (hi - lo) * i / 4
        parts.append(
            f'<line x1="{pad_l}" y1="{y(v):.1f}" x2="{pad_l + w}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{pad_l - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">'
            f"{escape(num(v, 0 if hi - lo >= 10 else 1))}</text>"
        )
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t - 6}" text-anchor="end" class="axis unit">'
                 f"{escape(unit)}</text>")  # fmt: skip
    for ts in time_ticks(t0, t1):
        parts.append(
            f'<line x1="{x(ts):.1f}" y1="{pad_t + h}" x2="{x(ts):.1f}" y2="{pad_t + h + 4}" '
            f'class="tick"/><text x="{x(ts):.1f}" y="{pad_t + h + 16}" text-anchor="middle" '
            f'class="axis time">{_tick_label(ts, span_t)}</text>'
        )
    zone = local(t1).strftime("UTC%z")
    parts.append(f'<text x="{pad_l + w}" y="{height - 3}" text-anchor="end" class="axis">'
                 f"{escape(t('local time'))} ({zone[:6]}:{zone[6:]})</text>")  # fmt: skip
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        for run in runs(s.points, gap_s):
            pts = " ".join(f"{x(ts):.1f},{y(v):.1f}" for ts, v in run)
            if len(run) > 1:
                parts.append(f'<polyline points="{pts}" class="series" stroke="{colour}"/>')
            else:  # a lone point, drawn
                ts, v = run[0]
                parts.append(f'<circle cx="{x(ts):.1f}" cy="{y(v):.1f}" r="3" class="dot" '
                             f'fill="{colour}"/>')  # fmt: skip
        if len(series) > 1:
            lx = pad_l + 8 + (i % 4) * (w // 4)
            parts.append(f'<rect x="{lx}" y="{pad_t + 4 + 14 * (i // 4)}" width="10" height="3" '
                         f'fill="{colour}"/><text x="{lx + 14}" y="{pad_t + 9 + 14 * (i // 4)}" '
                         f'class="legend">{escape(s.name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
