# The hardware seam: everything the node needs of its board, behind one small interface.
#
# HAL is the interface (and a board with nothing attached). SimHAL runs on the unix port:
# its inputs are files a test or a rig writes into ``sim_dir`` (``pin_door`` holding "1"),
# its outputs are files it writes there (``pin_relay``). hal_machine.MachineHAL drives the
# real pins; it is imported only when chosen, so nothing touches hardware at import time.
#
# Files in sim_dir:
#   inputs   pin_door, pin_box_heartbeat ("1"/"0"), temp_c ("31.5"), rssi ("-61"),
#            reset_cause (read once at boot, then removed: the next boot is "power_on")
#   outputs  pin_relay ("1"/"0"); wdt_fed (Unix time of the last feed, at most 1/s);
#            reset_cause = "wdt" when the simulated watchdog fires

import os
import sys

try:
    import clock
    import fsutil
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

RESET_CAUSES = ("power_on", "hard", "wdt", "deep_sleep", "soft", "unknown")

_FEED_NOTE_MS = 1000  # how often SimHAL records a watchdog feed in sim_dir


class HALError(Exception):
    """The HAL cannot be set up as configured."""


class HAL:
    """A board with nothing attached: no sensors, a relay that goes nowhere."""

    name = "none"

    def __init__(self) -> None:
        self._relay = False

    def set_relay(self, on: bool) -> None:
        self._relay = bool(on)

    def relay(self) -> bool:
        return self._relay

    def door_open(self) -> bool | None:
        """True when the cabinet door is open, None when there is no door switch."""
        return None

    def box_heartbeat(self) -> bool | None:
        """Level of the edge box's heartbeat line, None when not wired."""
        return None

    def temperature_c(self) -> float | None:
        return None

    def rssi(self) -> int | None:
        return None

    def reset_cause(self) -> str:
        return "unknown"

    def watchdog_start(self, timeout_ms: int) -> None:
        """Arm the watchdog; once armed it cannot be stopped, only fed."""

    def watchdog_feed(self) -> None:
        pass

    def readings(self) -> dict[str, object]:
        """The HAL's part of a heartbeat: present keys only."""
        out: dict[str, object] = {"reset_cause": self.reset_cause()}
        temp = self.temperature_c()
        if temp is not None:
            out["temp_c"] = temp
        rssi = self.rssi()
        if rssi is not None:
            out["rssi"] = rssi
        return out


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class SimHAL(HAL):
    """Simulated board for the unix port, driven through files in ``sim_dir``."""

    name = "sim"

    def __init__(self, sim_dir: str, exit_on_watchdog: bool = True) -> None:
        super().__init__()
        self.dir = sim_dir.rstrip("/") or "/"
        self.exit_on_watchdog = exit_on_watchdog
        if not _exists(self.dir):
            try:
                os.mkdir(self.dir)
            except OSError as exc:
                raise HALError("cannot create sim_dir %s: %s" % (self.dir, exc))  # noqa: B904
        cause = self._read("reset_cause")
        self._reset_cause = cause if cause in RESET_CAUSES else "power_on"
        if cause is not None:
            os.remove(self._path("reset_cause"))
        self._wdt_timeout: int | None = None
        self._wdt_fed = 0
        self._wdt_noted = 0
        self.set_relay(self._read("pin_relay") == "1")

    def _path(self, name: str) -> str:
        return self.dir + "/" + name

    def _read(self, name: str) -> str | None:
        try:
            with open(self._path(name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def _write(self, name: str, text: str) -> None:
        fsutil.atomic_write(self._path(name), text.encode())

    def _pin(self, name: str) -> bool | None:
        value = self._read(name)
        if value == "1":
            return True
        if value == "0":
            return False
        return None

    def _number(self, name: str, convert: "Callable[[str], Any]") -> "Any":
        value = self._read(name)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError:
            return None

    def set_relay(self, on: bool) -> None:
        super().set_relay(on)
        self._write("pin_relay", "1" if on else "0")

    def door_open(self) -> bool | None:
        return self._pin("pin_door")

    def box_heartbeat(self) -> bool | None:
        return self._pin("pin_box_heartbeat")

    def temperature_c(self) -> float | None:
        return self._number("temp_c", float)

    def rssi(self) -> int | None:
        return self._number("rssi", int)

    def reset_cause(self) -> str:
        return self._reset_cause

    def watchdog_start(self, timeout_ms: int) -> None:
        self._wdt_timeout = timeout_ms
        self._wdt_fed = clock.ticks_ms()
        self._wdt_noted = clock.ticks_add(self._wdt_fed, -_FEED_NOTE_MS)

    def watchdog_feed(self) -> None:
        """Feed; a feed later than the timeout is what a real watchdog never sees: the
        board has been reset by then. The simulation resets: reset_cause "wdt", exit 3."""
        if self._wdt_timeout is None:
            return
        now = clock.ticks_ms()
        late = clock.ticks_diff(now, self._wdt_fed)
        if late > self._wdt_timeout:
            self._write("reset_cause", "wdt")
            if self.exit_on_watchdog:
                print("E hal: watchdog expired (%d ms without a feed): reset" % late)
                sys.exit(3)
            raise HALError("watchdog expired after %d ms" % late)
        self._wdt_fed = now
        if clock.ticks_diff(now, self._wdt_noted) >= _FEED_NOTE_MS:
            self._wdt_noted = now
            self._write("wdt_fed", "%d" % clock.unix_time())


def make_hal(cfg: "dict[str, Any]") -> HAL:
    """The HAL ``cfg["hal"]`` names: "sim" (files in cfg["sim_dir"]), "machine" or "none"."""
    kind = cfg.get("hal", "sim")
    if kind == "sim":
        return SimHAL(cfg.get("sim_dir") or "sim")
    if kind == "machine":
        try:
            import hal_machine
        except ImportError:
            from firmware import hal_machine
        return hal_machine.MachineHAL(cfg.get("pins") or {})
    if kind == "none":
        return HAL()
    raise HALError("unknown hal %r (sim, machine or none)" % (kind,))
