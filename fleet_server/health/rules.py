"""Health rules: a heartbeat in, the conditions that are wrong out. No I/O; the one piece of
state, the fleet's delivery lag (``DeliveryLag``), is kept by the caller.

Thresholds live in the server config (``[health.rules]``); each rule names a heartbeat
field of the contract. A field the device does not report never raises its rule.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

WARNING = "warning"
CRITICAL = "critical"

OFFLINE_RULE = "offline"


class RuleThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temp_c_max: float = Field(80.0, description="SoC/cabinet temperature above this, °C")
    disk_used_pct_max: float = Field(90.0, ge=0, le=100, description="Disk use above this, %")
    mem_used_pct_max: float = Field(95.0, ge=0, le=100, description="Memory use above this, %")
    fps_min: float = Field(
        1.0, ge=0, description="Camera frame rate below this (when the camera reports fps)"
    )
    infer_ms_max: float = Field(500.0, gt=0, description="Detector latency above this, ms")
    outbox_max: int = Field(1000, ge=0, description="Messages waiting on disk above this")
    cert_days_min: float = Field(7.0, ge=0, description="Certificate expiring within this, days")
    clock_drift_s_max: float = Field(
        30.0, gt=0, description="Device clock further than this from the server's, seconds"
    )
    open_after: int = Field(
        2, ge=1, le=100, description="Consecutive bad heartbeats before an alert opens"
    )
    resolve_after: int = Field(
        2, ge=1, le=100, description="Consecutive good heartbeats before an alert resolves"
    )


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    value: float | str
    message: str


def _num(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class DeliveryLag:
    """How late heartbeats reach the rules, fleet-wide: the median of (received - sent) over
    the last ``window`` heartbeats. Most device clocks are right, so when the server falls
    behind (a backlog in the broker, a busy database) this median is that backlog, which is
    no device's clock drift; the clock rule measures drift from it. Trusted only once the
    window holds heartbeats of ``min_devices`` devices; never below 0."""

    def __init__(self, window: int = 201, min_devices: int = 5) -> None:
        self._recent: deque[tuple[str, float]] = deque(maxlen=window)
        self.min_devices = min_devices

    def add(self, device_id: str, offset_s: float) -> None:
        self._recent.append((device_id, offset_s))

    def seconds(self) -> float:
        if len({d for d, _ in self._recent}) < self.min_devices:
            return 0.0
        return max(0.0, statistics.median(o for _, o in self._recent))


# (heartbeat field, threshold attribute, rule, severity, what), checked in this order; a
# ``_max`` threshold is broken above, a ``_min`` one below
_LIMITS: tuple[tuple[str, str, str, str, str], ...] = (
    ("temp_c", "temp_c_max", "temperature", CRITICAL, "temperature °C"),
    ("disk_used_pct", "disk_used_pct_max", "disk", WARNING, "disk used %"),
    ("mem_used_pct", "mem_used_pct_max", "memory", WARNING, "memory used %"),
    ("infer_ms", "infer_ms_max", "inference_latency", WARNING, "inference ms"),
    ("outbox", "outbox_max", "outbox", WARNING, "outbox depth"),
    ("cert_days_left", "cert_days_min", "certificate", CRITICAL, "certificate days left"),
)
_FPS = ("fps", "fps_min", "fps", WARNING, "frames per second")


def _check_limit(
    body: dict[str, Any], t: RuleThresholds, check: tuple[str, str, str, str, str]
) -> Finding | None:
    key, attr, rule, severity, what = check
    if key not in body:  # most fields of most heartbeats are fine: this stays cheap
        return None
    value = _num(body, key)
    if value is None:
        return None
    limit = float(getattr(t, attr))
    if attr.endswith("_max") and value > limit:
        return Finding(rule, severity, value, f"{what} {value:g} > {limit:g}")
    if attr.endswith("_min") and value < limit:
        return Finding(rule, severity, value, f"{what} {value:g} < {limit:g}")
    return None


def evaluate(
    body: dict[str, Any], received_at: float, t: RuleThresholds, lag_s: float = 0.0
) -> list[Finding]:
    """Every rule that the heartbeat ``body`` breaks (it runs on every heartbeat of the
    fleet: a plain loop over a table, no closures)."""
    found = [f for check in _LIMITS if (f := _check_limit(body, t, check)) is not None]
    if body.get("camera") not in (None, "ok"):
        found.append(
            Finding("camera", CRITICAL, str(body["camera"]), f"camera state {body['camera']}")
        )
    elif (fps := _check_limit(body, t, _FPS)) is not None:
        found.append(fps)
    if body.get("throttled") is True:
        found.append(Finding("throttling", WARNING, "throttled", "CPU throttled"))
    scene = body.get("scene")  # the problems the camera's scene check sees, e.g. ["dark"]
    if isinstance(scene, list) and scene:
        what = ", ".join(str(s) for s in scene)[:64]
        found.append(Finding("scene", WARNING, what, f"scene: {what}"))
    ts = _num(body, "ts")
    drift = None if ts is None else ts - (received_at - lag_s)  # lag_s: DeliveryLag
    if drift is not None and abs(drift) > t.clock_drift_s_max:
        found.append(Finding("clock", WARNING, round(drift, 1), f"clock off by {drift:+.0f} s"))
    return found


RULES: tuple[str, ...] = (
    "temperature",
    "disk",
    "memory",
    "inference_latency",
    "outbox",
    "certificate",
    "camera",
    "fps",
    "throttling",
    "scene",
    "clock",
)


@dataclass(frozen=True)
class Step:
    """What one observation does to one (device, rule) condition."""

    bad_count: int
    good_count: int
    open: bool  # open an alert now
    resolve: bool  # resolve the active alert now


def step(bad: bool, bad_count: int, good_count: int, active: bool, t: RuleThresholds) -> Step:
    """Flap suppression: open after ``open_after`` bad in a row, resolve after
    ``resolve_after`` good in a row; a single odd heartbeat changes nothing."""
    if bad:
        bad_count, good_count = bad_count + 1, 0
    else:
        bad_count, good_count = 0, good_count + 1
    return Step(
        bad_count,
        good_count,
        open=bad and not active and bad_count >= t.open_after,
        resolve=not bad and active and good_count >= t.resolve_after,
    )


def broken_rules(findings: Iterable[Finding]) -> dict[str, Finding]:
    return {f.rule: f for f in findings}
