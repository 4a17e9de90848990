# The HAL on a real board (Pico W / ESP32) through ``machine``.
#
# Nothing here runs at import time: pins are claimed when MachineHAL is made, and the
# watchdog only when the node arms it (a machine.WDT cannot be stopped once started).
#
# ``pins`` (from the node config) maps roles to GPIO numbers, all optional:
#   relay (output, drives the edge box's power relay), door (input, pulled up; the switch
#   pulls it low when the door is CLOSED), box_heartbeat (input from the edge box).

import sys

try:
    import hal
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import hal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_CAUSE_NAMES = (
    ("PWRON_RESET", "power_on"),
    ("HARD_RESET", "hard"),
    ("WDT_RESET", "wdt"),
    ("DEEPSLEEP_RESET", "deep_sleep"),
    ("SOFT_RESET", "soft"),
)
# RP2040/RP2350 on-chip sensor: ADC channel 4, 27 C at 0.706 V, -1.721 mV per degree.
_RP2_TEMP_ADC = 4
_RP2_VREF = 3.3


class MachineHAL(hal.HAL):
    name = "machine"

    def __init__(self, pins: "dict[str, Any]") -> None:
        super().__init__()
        try:
            import machine
        except ImportError:
            raise hal.HALError("no machine module: not a board, use hal 'sim'")  # noqa: B904
        self._machine = machine
        self._wdt: "Any" = None
        try:
            self._cause = self._cause_name(machine.reset_cause())
            self._relay_pin = self._output(pins.get("relay"))
            self._door_pin = self._input(pins.get("door"))
            self._hb_pin = self._input(pins.get("box_heartbeat"))
        except (AttributeError, ValueError, TypeError) as exc:
            raise hal.HALError("cannot set up pins %r: %s" % (pins, exc))  # noqa: B904
        self._temp = self._temperature_reader()

    def _cause_name(self, code: int) -> str:
        for attr, name in _CAUSE_NAMES:
            if getattr(self._machine, attr, None) == code:
                return name
        return "unknown"

    def _output(self, num: int | None) -> "Any":
        if num is None:
            return None
        pin = self._machine.Pin(num, self._machine.Pin.OUT)
        pin.value(0)
        return pin

    def _input(self, num: int | None) -> "Any":
        if num is None:
            return None
        return self._machine.Pin(num, self._machine.Pin.IN, self._machine.Pin.PULL_UP)

    def _temperature_reader(self) -> "Callable[[], float] | None":
        if sys.platform == "rp2":
            adc = self._machine.ADC(_RP2_TEMP_ADC)

            def rp2_temp() -> float:
                volts = adc.read_u16() * _RP2_VREF / 65535
                return 27 - (volts - 0.706) / 0.001721

            return rp2_temp
        if sys.platform == "esp32":
            try:
                import esp32  # pyright: ignore[reportMissingImports]
            except ImportError:
                return None
            return getattr(esp32, "mcu_temperature", None)
        return None

    def set_relay(self, on: bool) -> None:
        super().set_relay(on)
        if self._relay_pin is not None:
            self._relay_pin.value(1 if on else 0)

    def door_open(self) -> bool | None:
        if self._door_pin is None:
            return None
        return self._door_pin.value() == 1

    def box_heartbeat(self) -> bool | None:
        if self._hb_pin is None:
            return None
        return self._hb_pin.value() == 1

    def temperature_c(self) -> float | None:
        if self._temp is None:
            return None
        try:
            return round(self._temp(), 1)
        except OSError:
            return None

    def rssi(self) -> int | None:
        try:
            import network

            wlan = network.WLAN(network.STA_IF)
            if not wlan.isconnected():
                return None
            return int(wlan.status("rssi"))
        except (ImportError, OSError, ValueError, TypeError):
            return None

    def reset_cause(self) -> str:
        return self._cause

    def watchdog_start(self, timeout_ms: int) -> None:
        if self._wdt is None:
            # RP2040 caps the timeout at 8388 ms
            self._wdt = self._machine.WDT(timeout=min(timeout_ms, 8388))

    def watchdog_feed(self) -> None:
        if self._wdt is not None:
            self._wdt.feed()
