"""Clock sanity before any TLS or signature decision.

A Pi has no battery clock: after a power cut it can wake in 1970 (or at the last fake-hwclock
save) until NTP answers. With such a clock TLS would refuse a valid broker certificate as
"not yet valid", and a clock set back could take an expired certificate for a valid one.
So the agent compares the clock with a floor it trusts, the later of

- ``RELEASE_FLOOR``: this software cannot run before it was built, and
- the last known-good time, saved on disk while the clock was sane,

and while the clock is below the floor it waits for time sync (saying so in its log every
``report_s``) instead of connecting. ``assess`` is the pure decision; ``ClockGuard`` holds
the file and the waiting. The time source is injected, so tests use a wrong clock without
touching the system's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.files import atomic_write

log = logging.getLogger(__name__)

# 2026-11-01T00:00:00Z: not before this release was built (raised at every release).
RELEASE_FLOOR = 1793491200.0
# Margin for a last-good time written just before a power cut and a clock that NTP then
# slews slightly backwards.
SLACK_S = 300.0
FILE_NAME = "clock-last-good"


@dataclass(frozen=True)
class ClockState:
    ok: bool
    now: float
    floor: float

    @property
    def behind_s(self) -> float:
        return max(0.0, self.floor - self.now)


def assess(now: float, release_floor: float, last_good: float | None) -> ClockState:
    """The clock is sane when it is not before the later of the two floors."""
    floor = max(release_floor, (last_good or 0.0) - SLACK_S)
    return ClockState(now >= floor, now, floor)


class ClockGuard:
    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        release_floor: float = RELEASE_FLOOR,
        save_every_s: float = 600.0,
    ) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.clock = clock
        self.release_floor = release_floor
        self.save_every_s = save_every_s
        self._last_saved = 0.0

    def last_good(self) -> float | None:
        try:
            return float(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def state(self) -> ClockState:
        return assess(self.clock(), self.release_floor, self.last_good())

    def mark_good(self, force: bool = False) -> None:
        """Save the current time as known-good (atomically), at most every save_every_s."""
        state = self.state()
        if not state.ok:
            return
        if not force and state.now - self._last_saved < self.save_every_s:
            return
        try:
            atomic_write(str(self.path), f"{state.now:.3f}\n".encode(), 0o644)
            self._last_saved = state.now
        except OSError as exc:
            log.warning("cannot save the last known-good time to %s: %s", self.path, exc)

    def wait_sane(self, stop: threading.Event, poll_s: float = 1.0, report_s: float = 30.0) -> bool:
        """Block until the clock is sane (True) or ``stop`` is set (False)."""
        state = self.state()
        last_report = -report_s
        waited = 0.0
        while not state.ok:
            if waited - last_report >= report_s:
                last_report = waited
                log.warning(
                    "clock not trusted: %.0f s behind the floor (%s); waiting for time sync "
                    "before any TLS connection or certificate decision",
                    state.behind_s,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.floor)),
                )
            if stop.wait(poll_s):
                return False
            waited += poll_s
            state = self.state()
        if waited:
            log.info("clock is sane again after %.0f s: continuing", waited)
        self.mark_good(force=True)
        return True
