"""Rollout planning on plain data: maintenance windows, wave sizes, the device order.

No I/O: the store feeds values in. Windows are "HH:MM-HH:MM" in a site's local time; one
whose end is before its start runs across midnight ("22:00-04:00").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MIN = 24 * 60


class PlanError(ValueError):
    """A campaign parameter that cannot be planned with (bad window, wave or zone)."""


@dataclass(frozen=True)
class Window:
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight (24:00 is 1440); end < start: across midnight

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def _minutes(text: str, what: str) -> int:
    hh, sep, mm = text.partition(":")
    if not sep or not (hh.isdigit() and mm.isdigit()) or len(hh) != 2 or len(mm) != 2:
        raise PlanError(f"window {what} {text!r}: use HH:MM")
    hours, minutes = int(hh), int(mm)
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise PlanError(f"window {what} {text!r}: not a time of day")
    return hours * 60 + minutes


def parse_window(text: str) -> Window:
    """``"01:00-05:00"`` -> Window; PlanError when malformed or empty."""
    start_s, sep, end_s = text.strip().partition("-")
    if not sep:
        raise PlanError(f"window {text!r}: use HH:MM-HH:MM")
    start, end = _minutes(start_s, "start"), _minutes(end_s, "end")
    if start == DAY_MIN:
        raise PlanError(f"window {text!r}: starts at 24:00")
    if start == end:
        raise PlanError(f"window {text!r}: start and end are the same time")
    return Window(start, end)


def parse_windows(texts: Sequence[str]) -> tuple[Window, ...]:
    return tuple(parse_window(t) for t in texts)


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """An IANA zone by name; PlanError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise PlanError(f"unknown time zone {name!r}") from exc


def in_windows(windows: Sequence[Window], now: float, tz: str) -> bool:
    """Whether ``now`` (unix time) is inside one of the windows in zone ``tz``; no windows:
    any time is."""
    if not windows:
        return True
    local = dt.datetime.fromtimestamp(now, zone(tz))
    minute = local.hour * 60 + local.minute
    return any(w.contains(minute) for w in windows)


@dataclass(frozen=True)
class WaveSpec:
    count: int | None = None  # devices reached by the end of this wave (cumulative)
    percent: float | None = None  # share of the campaign's devices reached (cumulative)
    success: float | None = None  # this wave's success threshold (else the campaign's)
    failure: float | None = None  # this wave's failure threshold (else the campaign's)


def wave_ends(waves: Sequence[WaveSpec], total: int) -> list[int]:
    """Cumulative device counts at the end of each wave (never more than ``total``, never
    less than the wave before). A percentage is rounded up, so 1 % of 50 devices is 1."""
    if not waves:
        raise PlanError("a campaign needs at least one wave")
    ends: list[int] = []
    for i, w in enumerate(waves):
        if (w.count is None) == (w.percent is None):
            raise PlanError(f"wave {i + 1}: give either count or percent")
        if w.count is not None:
            want = w.count
        else:
            pct = float(w.percent or 0.0)
            want = math.ceil(total * pct / 100.0 - 1e-9)
        ends.append(min(total, max(want, ends[-1] if ends else 0)))
    return ends


def wave_sizes(ends: Sequence[int]) -> list[int]:
    """Devices per wave, from the cumulative ends ``wave_ends`` gives."""
    return [e - (ends[i - 1] if i else 0) for i, e in enumerate(ends)]


def wave_of(position: int, ends: Sequence[int]) -> int:
    """The wave a device at ``position`` (0-based, in plan order) belongs to; len(ends) when
    no wave reaches it (the campaign never asks it)."""
    for i, end in enumerate(ends):
        if position < end:
            return i
    return len(ends)


def plan_order(key: str, device_ids: Sequence[str]) -> list[str]:
    """Devices in the order a campaign reaches them: a stable shuffle keyed by ``key`` (what
    the campaign installs and its name), so a canary spreads over sites and id ranges, and a
    dry run shows the same order as the campaign made from it."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{key}/{d}".encode()).digest())
