# Time for the node: millisecond ticks (wrapping, compare only with ticks_diff), sleeping,
# and Unix time for payloads. MicroPython's ``time`` has the ticks functions; on CPython
# (tests of the node's logic) they are emulated with the same modular arithmetic.

import time

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = time.sleep_ms
else:  # CPython
    _PERIOD = 1 << 30
    _HALF = 1 << 29
    _mono = getattr(time, "monotonic", time.time)

    def ticks_ms():
        return int(_mono() * 1000) % _PERIOD

    def ticks_diff(ticks1, ticks2):
        return ((ticks1 - ticks2 + _HALF) % _PERIOD) - _HALF

    def ticks_add(ticks, delta):
        return (ticks + delta) % _PERIOD

    def sleep_ms(ms):
        time.sleep(ms / 1000)


# Ports whose epoch is 2000-01-01 (most microcontroller ports) report Unix time plus this.
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


def unix_time():
    """Seconds since 1970-01-01 UTC, whatever epoch the port uses."""
    return time.time() + EPOCH_OFFSET


class Uptime:
    """Milliseconds since boot, added up step by step so that tick wrap-around cannot
    corrupt it (a single ticks_diff is only right for spans under half the tick period)."""

    def __init__(self, now):
        self.ms = 0
        self._last = now

    def update(self, now):
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

    def __init__(self, interval_ms):
        self.interval_ms = interval_ms
        self._next = None

    def reset(self):
        """Make the next ``due`` true at once (for instance after a reconnect)."""
        self._next = None

    def due(self, now):
        if self._next is not None and ticks_diff(now, self._next) < 0:
            return False
        nxt = now if self._next is None else self._next
        nxt = ticks_add(nxt, self.interval_ms)
        if ticks_diff(nxt, now) <= 0:
            nxt = ticks_add(now, self.interval_ms)
        self._next = nxt
        return True

    def ms_left(self, now):
        """Milliseconds until the next deadline (0 when due)."""
        if self._next is None:
            return 0
        left = ticks_diff(self._next, now)
        return left if left > 0 else 0
