"""Traffic counts: line crossings per class per direction, and zone entries per class,
summed over an interval. Pure: track movements and times in, counts out.

A track moves from its previous anchor point to its new one (bottom centre of the box by
default, where a vehicle or a person meets the road). When that step crosses a line
segment it counts once for that line, class and direction; when it goes from outside a
zone polygon to inside, it counts one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.vision.detector import Box
from agent.vision.settings import LineSettings, ZoneSettings

Pt = tuple[float, float]


def anchor_point(box: Box, anchor: str) -> Pt:
    if anchor == "bottom":
        return ((box[0] + box[2]) / 2, box[3])
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _side(a: Pt, b: Pt, p: Pt) -> float:
    """The cross product (b - a) x (p - a). In image coordinates (y down) it is > 0 when
    ``p`` is on the right-hand side of a->b as seen on the screen, < 0 on the left."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(a: Pt, b: Pt, p: Pt, q: Pt) -> int:
    """-1 when the step p->q crosses segment a-b from its left-hand side (on the screen,
    looking from a to b) to its right, +1 the other way, 0 when it does not cross
    (touching the line is not a crossing yet)."""
    s_p, s_q = _side(a, b, p), _side(a, b, q)
    if s_p == 0 or s_q == 0 or (s_p > 0) == (s_q > 0):
        return 0
    t_a, t_b = _side(p, q, a), _side(p, q, b)
    if (t_a > 0) == (t_b > 0) and t_a != 0 and t_b != 0:
        return 0  # the infinite line is crossed, the segment is not
    return 1 if s_p > 0 else -1


def inside(poly: list[Pt], p: Pt) -> bool:
    """Even-odd rule."""
    x, y = p
    hit = False
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        if (y0 > y) != (y1 > y):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
            if x < xc:
                hit = not hit
    return hit


@dataclass
class Interval:
    start: float
    lines: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    zones: dict[str, dict[str, int]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.lines and not self.zones


class Counter:
    def __init__(
        self,
        lines: list[LineSettings],
        zones: list[ZoneSettings],
        every_s: float,
        anchor: str,
        start: float,
    ) -> None:
        self.lines = lines
        self.zones = zones
        self.every_s = every_s
        self.anchor = anchor
        self.current = Interval(start)
        self.totals: dict[str, int] = {}

    def move(self, label: str, before: Box, after: Box) -> list[tuple[str, str]]:
        """Count one step of a track; returns (line or zone, direction or "enter") hits."""
        p = anchor_point(before, self.anchor)
        q = anchor_point(after, self.anchor)
        hits: list[tuple[str, str]] = []
        for line in self.lines:
            sign = crossing(line.a, line.b, p, q)
            if sign:
                direction = line.directions[0] if sign < 0 else line.directions[1]
                per = self.current.lines.setdefault(line.name, {}).setdefault(label, {})
                per[direction] = per.get(direction, 0) + 1
                hits.append((line.name, direction))
        for zone in self.zones:
            if not inside(zone.points, p) and inside(zone.points, q):
                per_zone = self.current.zones.setdefault(zone.name, {})
                per_zone[label] = per_zone.get(label, 0) + 1
                hits.append((zone.name, "enter"))
        for name, _how in hits:
            self.totals[name] = self.totals.get(name, 0) + 1
        return hits

    def due(self, wall: float) -> bool:
        return wall - self.current.start >= self.every_s

    def flush(self, wall: float) -> dict[str, object]:
        """The counts of the interval that ends at ``wall`` (a ``counts`` event's data)."""
        done = self.current
        self.current = Interval(wall)
        return {
            "start_ts": round(done.start, 3),
            "end_ts": round(wall, 3),
            "lines": done.lines,
            "zones": done.zones,
        }
