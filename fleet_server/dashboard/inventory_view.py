"""Dashboard helpers for tags and the hardware inventory (pure: data in, rows out)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fleet_server.db import Device
from fleet_server.inventory import store as inventory

# inventory keys shown first on the device page, with their labels
_HW_LABELS = [
    ("model", "board"),
    ("serial", "serial"),
    ("uid", "unique id"),
    ("cpus", "CPUs"),
    ("mem_mb", "memory (MB)"),
    ("heap_kb", "heap (KiB)"),
    ("os", "OS"),
    ("kernel", "kernel"),
    ("arch", "architecture"),
    ("platform", "platform"),
    ("camera_backend", "camera backend"),
    ("camera_sensor", "camera sensor"),
]


def parse_tags(text: str) -> tuple[list[str], list[str]]:
    """Tags typed in a filter box (space or comma separated): (valid, refused)."""
    good: list[str] = []
    bad: list[str] = []
    for word in re.split(r"[\s,]+", text.strip().lower()):
        if not word:
            continue
        try:
            good.append(inventory.check_tag(word))
        except inventory.TagError:
            bad.append(word)
    return sorted(set(good))[: inventory.MAX_FILTER_TAGS], bad


def hardware_rows(hardware: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) rows: known keys in a fixed order, then the others by name."""
    hw = dict(hardware or {})
    rows = [(label, str(hw.pop(key))) for key, label in _HW_LABELS if key in hw]
    rows += [(key, str(value)) for key, value in sorted(hw.items())]
    return rows


def hardware_breakdown(devices: Iterable[Device]) -> list[tuple[tuple[str, str], int]]:
    """((kind, board model), devices) sorted by count, most first."""
    counts: Counter[tuple[str, str]] = Counter(
        (d.kind, inventory.hardware_model(d.hardware)) for d in devices
    )
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
