"""The one gate every message a device sends goes through before ingest keeps it.

``Gate.admit`` turns whatever a payload does to the contract's decoder into a verdict: the
decoded message, or a refusal with a reason. A ``ProtocolError`` gives the contract's
reason; anything else the decoder raises (it should not, but a device's bytes are the
least trusted input there is) gives ``decode_failure``; the per-device budget
(``budget.py``) and an operator's quarantine give theirs. Nothing escapes: the caller
acknowledges and drops every refusal, so a poison message is never redelivered.

Refusals are counted in ``camfleet_ingest_rejected_total{reason}`` and per device in
memory (``refused_by_device``); they are logged through ``RefusalLog``, which writes the
first refusal of a device and reason at once and then one summary line per interval, so a
device sending garbage as fast as it can costs the server's disk a line every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware import contract

log = logging.getLogger(__name__)

R_DECODE = "decode_failure"  # the decoder raised something other than ProtocolError
R_BUDGET = "over_budget"  # the device's token bucket for this kind is empty
R_QUARANTINED = "quarantined"  # an operator (or the flood rule) quarantined the device
GATE_REASONS = (R_DECODE, R_BUDGET, R_QUARANTINED)
REASONS = contract.REASONS + GATE_REASONS

_UNKNOWN_DEVICE = "?"  # refusals whose topic names no valid device
_MAX_KEYS = 10_000  # (device, reason) pairs tracked by the log limiter


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    device_id: str
    detail: str


Decoded = tuple[str, str, dict[str, Any]]


def device_of(topic: str) -> str:
    """The device a topic names, or "?" (the broker's ACL ties a device to its topic)."""
    parts = topic.split("/", 3) if isinstance(topic, str) else []
    if len(parts) >= 3 and contract.valid_device_id(parts[2]):
        return parts[2]
    return _UNKNOWN_DEVICE


def decode(topic: str, payload: bytes) -> Decoded | Refused:
    """The contract's decode, with every failure a ``Refused``."""
    try:
        return contract.decode(topic, payload)
    except contract.ProtocolError as exc:
        return Refused(exc.reason, device_of(topic), exc.detail[:200])
    except Exception as exc:  # noqa: BLE001 - the point: nothing a device sends escapes
        return Refused(R_DECODE, device_of(topic), f"{type(exc).__name__}: {exc}"[:200])


def precheck(
    topic: str,
    quarantined: Callable[[str], bool],
    take: Callable[[str, str, float], bool],
    now: float,
) -> Refused | None:
    """The refusals the topic alone decides: a quarantined device, a kind over its
    budget. None: go on to decode (a topic that is not ours is refused there)."""
    try:
        device_id, kind = contract.parse_topic(topic)
    except Exception:  # noqa: BLE001 - decode() refuses it with the contract's reason
        return None
    if quarantined(device_id):
        return Refused(R_QUARANTINED, device_id, "quarantined")
    if not take(device_id, kind, now):
        return Refused(R_BUDGET, device_id, f"{kind} over budget")
    return None


class RefusalLog:
    """Log refusals at a bounded rate: the first of each (device, reason) at once, then at
    most one summary line per ``interval_s`` with how many followed."""

    def __init__(
        self, interval_s: float = 10.0, clock: Any = time.monotonic, counter: Any = None
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.counter = counter  # a prometheus Counter of lines written, when given
        self._lock = threading.Lock()
        # (device, reason) -> [refusals not yet logged, when the window opened, last detail]
        self._open: dict[tuple[str, str], list[Any]] = {}
        self.lines = 0  # lines written (tests count them)

    def note(self, refused: Refused, size: int) -> None:
        now = self.clock()
        key = (refused.device_id, refused.reason)
        with self._lock:
            entry = self._open.get(key)
            if entry is None and len(self._open) >= _MAX_KEYS:
                key = (_UNKNOWN_DEVICE, refused.reason)
                entry = self._open.get(key)
            if entry is None:
                self._open[key] = [0, now, refused.detail]
                self._count(1)
                log.warning("refused %s from %s (%d bytes): %s", refused.reason,
                            refused.device_id, size, refused.detail)  # fmt: skip
                return
            entry[0] += 1
            entry[2] = refused.detail
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the summaries whose interval is over; forget quiet pairs."""
        now = self.clock() if now is None else now
        due: list[tuple[tuple[str, str], int, str]] = []
        with self._lock:
            for key, entry in list(self._open.items()):
                if now - entry[1] < self.interval_s:
                    continue
                if entry[0]:
                    due.append((key, entry[0], entry[2]))
                    self._open[key] = [0, now, entry[2]]
                else:
                    del self._open[key]  # a quiet interval: the next refusal logs at once
            self._count(len(due))
        for (device, reason), n, detail in due:
            log.warning("refused %d more %s from %s in the last %.0fs; last: %s", n, reason,
                        device, self.interval_s, detail)  # fmt: skip

    def _count(self, n: int) -> None:
        self.lines += n
        if self.counter is not None and n:
            self.counter.inc(n)


class RefusalCounts:
    """Refusals per device and reason since the start (for the API and the flood rule)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def add(self, device_id: str, reason: str, n: int = 1) -> None:
        with self._lock:
            if device_id not in self._counts and len(self._counts) >= _MAX_KEYS:
                device_id = _UNKNOWN_DEVICE
            self._counts.setdefault(device_id, Counter())[reason] += n

    def of(self, device_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.get(device_id, {}))

    def all(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {dev: dict(c) for dev, c in self._counts.items()}
