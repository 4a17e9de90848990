"""A budget per device and message kind: a token bucket, and the flood it reveals.

Pure decisions on numbers (no I/O): ``Budget.take`` says whether one more message of a
device and kind fits its bucket (``rate_per_s`` refilled, ``burst`` at most); ``floods``
says which devices started or stopped flooding. A device floods when its messages have been
dropped over budget without a pause of ``flood_gap_s`` for ``flood_after_s``; it stops when
nothing of it was dropped for ``flood_clear_s``. The defaults are generous: an honest
device (a heartbeat a minute, a burst of events when a crowd passes) never comes near them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class KindBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_per_s: float = Field(gt=0, description="Messages per second refilled")
    burst: float = Field(ge=1, description="Most messages at once (the bucket's size)")


def _defaults() -> dict[str, KindBudget]:
    return {
        # a device back after days away sends its whole outbox at once: the bursts hold it
        "heartbeat": KindBudget(rate_per_s=2.0, burst=1000),
        "status": KindBudget(rate_per_s=1.0, burst=100),
        "event": KindBudget(rate_per_s=100.0, burst=10000),
        "cmd_res": KindBudget(rate_per_s=20.0, burst=500),
        "config_reported": KindBudget(rate_per_s=1.0, burst=100),
        "update_state": KindBudget(rate_per_s=5.0, burst=200),
    }


class BudgetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Drop what a device sends beyond its budget")
    kinds: dict[str, KindBudget] = Field(
        default_factory=_defaults,
        description="Budget per message kind; a kind not named here has no limit",
    )
    flood_after_s: float = Field(
        30.0, gt=0, description="Over budget this long without a pause: a 'flooding' alert"
    )
    flood_gap_s: float = Field(
        5.0, gt=0, description="A pause this long in the drops ends a flood's streak"
    )
    flood_clear_s: float = Field(
        60.0, gt=0, description="Nothing dropped this long: the flood is over (alert resolved)"
    )
    auto_quarantine: bool = Field(
        False, description="Quarantine a flooding device on its own (an operator releases it)"
    )

    @field_validator("kinds", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """A kind named in the config replaces its default; the others keep theirs."""
        if isinstance(value, dict):
            return {**_defaults(), **value}
        return value


@dataclass
class _Flood:
    first: float  # first drop of the current streak
    last: float  # latest drop
    dropped: int = 0
    flooding: bool = False


@dataclass
class Budget:
    settings: BudgetSettings
    _buckets: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _floods: dict[str, _Flood] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the floods (2 threads)

    def take(self, device_id: str, kind: str, now: float) -> bool:
        """One message of ``kind`` from ``device_id`` at ``now`` (monotonic seconds):
        True when it fits the budget (a token is taken), False when it is over."""
        spec = self.settings.kinds.get(kind)
        if not self.settings.enabled or spec is None:
            return True
        key = (device_id, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [spec.burst, now]
        tokens = min(spec.burst, bucket[0] + (now - bucket[1]) * spec.rate_per_s)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        self._dropped(device_id, now)
        return False

    def _dropped(self, device_id: str, now: float) -> None:
        with self._lock:
            flood = self._floods.get(device_id)
            gap = self.settings.flood_gap_s
            if flood is None or (not flood.flooding and now - flood.last > gap):
                flood = self._floods[device_id] = _Flood(first=now, last=now)
            flood.last = now
            flood.dropped += 1

    def floods(self, now: float) -> tuple[list[str], list[str]]:
        """(devices that began flooding, devices whose flood is over) since the last call."""
        with self._lock:
            return self._floods_locked(now)

    def _floods_locked(self, now: float) -> tuple[list[str], list[str]]:
        began: list[str] = []
        ended: list[str] = []
        for device_id, flood in list(self._floods.items()):
            quiet = now - flood.last
            if flood.flooding:
                if quiet > self.settings.flood_clear_s:
                    ended.append(device_id)
                    del self._floods[device_id]
            elif quiet > self.settings.flood_gap_s:
                del self._floods[device_id]  # a burst, not a flood
            elif flood.last - flood.first >= self.settings.flood_after_s:
                flood.flooding = True
                began.append(device_id)
        return began, ended

    def flooding(self) -> dict[str, int]:
        """Devices flooding now -> messages dropped in their flood."""
        with self._lock:
            return {d: f.dropped for d, f in self._floods.items() if f.flooding}
