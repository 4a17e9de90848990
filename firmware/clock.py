# Time for the node: millisecond ticks (wrapping, compare only with ticks_diff), sleeping,
# and Unix time for payloads. MicroPython's ``time`` has the ticks functions; on CPython
# (tests of the node's logic) they are emulated with the same modular arithmetic.

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

# Ticks are plain ints here (the stubs make them an opaque type that int code cannot hold).
ticks_ms: "Callable[[], int]"
ticks_diff: "Callable[[int, int], int]"
ticks_add: "Callable[[int, int], int]"
sleep_ms: "Callable[[int], None]"

if hasattr(time, "ticks_ms"):
    _mp_time: "Any" = time
    ticks_ms = _mp_time.ticks_ms
    ticks_diff = _mp_time.ticks_diff
    ticks_add = _mp_time.ticks_add
    sleep_ms = _mp_time.sleep_ms
else:  # CPython
    _PERIOD = 1 << 30
    _HALF = 1 << 29
    _mono = getattr(time, "monotonic", time.time)

    def _cp_ticks_ms() -> int:
        return int(_mono() * 1000) % _PERIOD

    def _cp_ticks_diff(ticks1: int, ticks2: int) -> int:
        return ((ticks1 - ticks2 + _HALF) % _PERIOD) - _HALF

    def _cp_ticks_add(ticks: int, delta: int) -> int:
        return (ticks + delta) % _PERIOD

    def _cp_sleep_ms(ms: int) -> None:
        time.sleep(ms / 1000)

    ticks_ms = _cp_ticks_ms
    ticks_diff = _cp_ticks_diff
    ticks_add = _cp_ticks_add
    sleep_ms = _cp_sleep_ms


_T0 = ticks_ms()


def log(level: str, fmt: str, *args: object) -> None:
    """One line on stdout: seconds since start, level letter, message. Never key material."""
    ms = ticks_diff(ticks_ms(), _T0)
    print("[%6d.%03d] %s node: %s" % (ms // 1000, ms % 1000, level, fmt % args if args else fmt))


# Ports whose epoch is 2000-01-01 (most microcontroller ports) report Unix time plus this.
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


def unix_time() -> float:
    """Seconds since 1970-01-01 UTC, whatever epoch the port uses."""
    return time.time() + EPOCH_OFFSET


class Uptime:
    """Milliseconds since boot, added up step by step so that tick wrap-around cannot
    corrupt it (a single ticks_diff is only right for spans under half the tick period)."""

    def __init__(self, now: int) -> None:
        self.ms = 0
        self._last = now

    def update(self, now: int) -> int:
        step = ticks_diff(now, self._last)
        if step > 0:
            self.ms += step
        self._last = now
        return self.ms


class Every:
    """A periodic deadline on ticks: ``due(now)`` is True once per ``interval_ms``.

    The first call is due at once. A late check does not bunch up missed periods: the
    next deadline is one interval after the late one, or after ``now`` if far behind.
    """

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._next: int | None = None

    def reset(self) -> None:
        """Make the next ``due`` true at once (for instance after a reconnect)."""
        self._next = None

    def due(self, now: int) -> bool:
        if self._next is not None and ticks_diff(now, self._next) < 0:
            return False
        nxt = now if self._next is None else self._next
        nxt = ticks_add(nxt, self.interval_ms)
        if ticks_diff(nxt, now) <= 0:
            nxt = ticks_add(now, self.interval_ms)
        self._next = nxt
        return True

    def ms_left(self, now: int) -> int:
        """Milliseconds until the next deadline (0 when due)."""
        if self._next is None:
            return 0
        left = ticks_diff(self._next, now)
        return left if left > 0 else 0


class Liveness:
    """Which tasks have made progress lately.

    Each task has an allowance; ``beat`` records that it finished a step. The main loop
    feeds the watchdog only while ``stalled`` is None, so a task that hangs (the loop
    stops) or keeps failing (its beat stops) leaves the watchdog hungry and the board
    resets. One task's trouble is not hidden by the others' progress.
    """

    def __init__(self) -> None:
        self._limit: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def add(self, name: str, limit_ms: int, now: int) -> None:
        self._limit[name] = limit_ms
        self._last[name] = now

    def beat(self, name: str, now: int) -> None:
        self._last[name] = now

    def stalled(self, now: int) -> str | None:
        """A task whose last beat is older than its allowance, or None."""
        for name in self._limit:
            if ticks_diff(now, self._last[name]) > self._limit[name]:
                return name
        return None
