"""A wrong wall clock for a Python device process on the virtual rig.

    python -m hil_tests.clock_shim OFFSET_FILE -m agent.cli --config agent.toml

The offset file holds seconds to add to the true time, as ``+N`` or ``-N`` (the format
libfaketime reads from ``FAKETIME_TIMESTAMP_FILE``, which the rig uses for the MicroPython
node: one file format for both). It is read again at most every ``REREAD_S``, so the rig
can set the clock wrong and correct it while the process runs.

Why not libfaketime for the agent too: Debian 12's libfaketime 0.9.10 breaks Python 3.11's
``time.sleep`` and ``threading`` waits (libfaketime issues #426 and #469). The shim moves
``time.time``/``time.time_ns`` before the agent is imported, so every default clock the
agent binds (``ClockGuard``, heartbeat timestamps, renewal) reads the wrong time; the
monotonic clock stays true. OpenSSL's own certificate time checks still see the true time
(a limit of the virtual rig: a real rig sets the box's system clock).
"""

from __future__ import annotations

import math
import runpy
import sys
import threading
import time
from pathlib import Path

REREAD_S = 0.2


def parse_offset(text: str) -> float:
    """``+N`` / ``-N`` / ``N`` seconds; an empty file is no offset."""
    text = text.strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError as exc:
        raise ValueError(f"clock offset {text!r} is not a number of seconds") from exc
    if not math.isfinite(value) or abs(value) > 100 * 365 * 86400:  # NaN or a century
        raise ValueError(f"clock offset {text!r} is out of range")
    return value


def format_offset(seconds: float) -> str:
    return f"{round(seconds):+d}\n"


class OffsetClock:
    """The true time plus the offset the file holds (re-read at most every REREAD_S)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._real = time.time
        self._mono = time.monotonic
        self._lock = threading.Lock()
        self._offset = 0.0
        self._read_at = -REREAD_S
        self._refresh()

    def _refresh(self) -> None:
        try:
            self._offset = parse_offset(self.path.read_text())
        except FileNotFoundError:
            self._offset = 0.0
        except (OSError, ValueError):
            pass  # a half-written or bad file keeps the last offset
        self._read_at = self._mono()

    def offset(self) -> float:
        with self._lock:
            if self._mono() - self._read_at >= REREAD_S:
                self._refresh()
            return self._offset

    def time(self) -> float:
        return self._real() + self.offset()

    def time_ns(self) -> int:
        return int(self.time() * 1e9)


def install(path: Path) -> OffsetClock:
    clock = OffsetClock(path)
    time.time = clock.time
    time.time_ns = clock.time_ns
    return clock


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "-m":
        print("usage: python -m hil_tests.clock_shim OFFSET_FILE -m MODULE [ARGS...]")
        return 2
    install(Path(args[0]))
    module = args[2]
    sys.argv = [module, *args[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
