# A simulated board for the unix port, driven through files in ``sim_dir``.
#
# It implements hal.HAL the way a real board would behave, so the node cannot tell:
#
# inputs (a test or rig writes them)
#   pin_door, pin_tamper, pin_mains, pin_box_heartbeat   "1" / "0" (missing: not wired)
#   battery_v, mcu_temp_c, rssi                          numbers
#   temp_c, humidity_pct      the SHT3x on the simulated I2C bus (present while temp_c is);
#                             its bytes go through the same driver as on a board
#   i2c_hang                  while it exists the I2C bus hangs (a stuck clock line);
#                             a reset clears it (removed at boot)
#   i2c_error                 while it exists the chip does not answer (OSError)
#   reset_cause               read once at boot, then removed; missing: "power_on"
# outputs (the node writes them)
#   pin_relay                 "1" energised (box power off) / "0"
#   relay_log                 one line per change: "<unix ms> <0|1>"
#   wdt_fed                   Unix time of the last watchdog feed (at most once a second)
#   reset_cause               written at a reset: "wdt" when the watchdog fired, "soft"
#                             for reset(); the board (hil_tests/node.py) then restarts
#
# The watchdog is a timer thread, like the hardware one beside the CPU: when the node
# stops feeding it for timeout_ms, it writes reset_cause "wdt" and kills the process at
# once (SIGKILL: no cleanup, no MQTT DISCONNECT), whatever the main thread is doing.
# Pins, like a real board's, come up released after a reset: the relay starts at "0".

import os

try:
    import clock
    import fsutil
    import hal
    import sht3x
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, fsutil, hal, sht3x

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_FEED_NOTE_MS = 1000  # how often a feed is recorded in wdt_fed
_WDT_TICK_MS = 20  # how often the watchdog thread looks
_HANG_MAX_MS = 600000  # a simulated hang ends by itself after this (the watchdog is faster)
_ENODEV = 19


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class SimI2C:
    """An I2C bus with an SHT3x on it, as files. Same calls as machine.I2C."""

    def __init__(self, board: "SimHAL") -> None:
        self.board = board

    def _present(self, addr: int) -> None:
        b = self.board
        deadline = clock.ticks_add(clock.ticks_ms(), _HANG_MAX_MS)
        while _exists(b.path("i2c_hang")) and clock.ticks_diff(deadline, clock.ticks_ms()) > 0:
            clock.sleep_ms(50)  # stuck: nothing returns, nothing feeds the watchdog
        if addr != sht3x.ADDRESS or _exists(b.path("i2c_error")) or b.read("temp_c") is None:
            raise OSError(_ENODEV)

    def writeto(self, addr: int, buf: bytes) -> int:
        self._present(addr)
        return len(buf)

    def readfrom(self, addr: int, n: int) -> bytes:
        self._present(addr)
        temp = self.board.number("temp_c", float)
        rh = self.board.number("humidity_pct", float)
        if temp is None:
            raise OSError(_ENODEV)
        return sht3x.encode(temp, rh or 0.0)[:n]


class SimHAL(hal.HAL):
    """Simulated board for the unix port, driven through files in ``sim_dir``."""

    name = "sim"

    def __init__(self, sim_dir: str, wdt_thread: bool = True) -> None:
        super().__init__()
        self.dir = sim_dir.rstrip("/") or "/"
        self.wdt_thread = wdt_thread
        if not _exists(self.dir):
            try:
                os.mkdir(self.dir)
            except OSError as exc:
                raise hal.HALError("cannot create sim_dir %s: %s" % (self.dir, exc))  # noqa: B904
        cause = self.read("reset_cause")
        self._reset_cause = cause if cause in hal.RESET_CAUSES else "power_on"
        if cause is not None:
            os.remove(self.path("reset_cause"))
        if _exists(self.path("i2c_hang")):
            os.remove(self.path("i2c_hang"))
        self._wdt_timeout: int | None = None
        self._wdt_fed = 0
        self._wdt_noted = 0
        self.i2c = SimI2C(self)
        if self.read("pin_relay") != "0":  # the pin came up released
            self._relay = True
            self.set_relay(False)

    def path(self, name: str) -> str:
        return self.dir + "/" + name

    def read(self, name: str) -> str | None:
        try:
            with open(self.path(name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def _write(self, name: str, text: str) -> None:
        fsutil.atomic_write(self.path(name), text.encode())

    def _pin(self, name: str) -> bool | None:
        value = self.read(name)
        if value == "1":
            return True
        if value == "0":
            return False
        return None

    def number(self, name: str, convert: "Callable[[str], Any]") -> "Any":
        value = self.read(name)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError:
            return None

    def set_relay(self, on: bool) -> None:
        changed = bool(on) != self._relay
        super().set_relay(on)
        if changed:
            self._write("pin_relay", "1" if on else "0")
            with open(self.path("relay_log"), "a") as f:
                f.write("%d %d\n" % (int(clock.unix_time() * 1000), 1 if on else 0))

    def door_open(self) -> bool | None:
        return self._pin("pin_door")

    def tamper(self) -> bool | None:
        return self._pin("pin_tamper")

    def mains_ok(self) -> bool | None:
        return self._pin("pin_mains")

    def battery_v(self) -> float | None:
        return self.number("battery_v", float)

    def box_line(self) -> bool | None:
        return self._pin("pin_box_heartbeat")

    def climate(self) -> "tuple[float, float] | None":
        if self.read("temp_c") is None and not _exists(self.path("i2c_hang")):
            return None  # no sensor fitted
        return sht3x.measure(self.i2c)

    def temperature_c(self) -> float | None:
        return self.number("mcu_temp_c", float)

    def rssi(self) -> int | None:
        return self.number("rssi", int)

    def reset_cause(self) -> str:
        return self._reset_cause

    # ------------------------------------------------------------ watchdog and reset

    def watchdog_start(self, timeout_ms: int) -> None:
        if self._wdt_timeout is not None:
            return
        self._wdt_timeout = timeout_ms
        self._wdt_fed = clock.ticks_ms()
        self._wdt_noted = clock.ticks_add(self._wdt_fed, -_FEED_NOTE_MS)
        if self.wdt_thread:
            import _thread

            _thread.start_new_thread(self._watch, ())

    def expired(self, now: int) -> bool:
        timeout = self._wdt_timeout
        return timeout is not None and clock.ticks_diff(now, self._wdt_fed) > timeout

    def watchdog_feed(self) -> None:
        if self._wdt_timeout is None:
            return
        now = clock.ticks_ms()
        if self.expired(now):
            self._fire()  # without the thread: a late feed is a reset that already happened
        self._wdt_fed = now
        if clock.ticks_diff(now, self._wdt_noted) >= _FEED_NOTE_MS:
            self._wdt_noted = now
            self._write("wdt_fed", "%d" % clock.unix_time())

    def _watch(self) -> None:
        while not self.expired(clock.ticks_ms()):
            clock.sleep_ms(_WDT_TICK_MS)
        self._fire()

    def _fire(self) -> None:
        self._write("reset_cause", "wdt")
        print("E hal: watchdog expired: reset")
        self._die(3)

    def reset(self) -> None:
        self._write("reset_cause", "soft")
        print("I hal: reset")
        self._die(4)

    def _die(self, code: int) -> None:
        if self.wdt_thread:
            # a reset stops the board where it stands: SIGKILL from outside this process
            getattr(os, "system")("kill -9 $PPID")  # noqa: B009 - not in every port's stubs
            clock.sleep_ms(10000)
        raise hal.HALError("board reset (%d)" % code)
