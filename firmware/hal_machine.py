# The HAL on a real board (Pico W / ESP32) through ``machine``.
#
# Nothing here runs at import time: pins are claimed when MachineHAL is made, and the
# watchdog only when the node arms it (a machine.WDT cannot be stopped once started).
#
# ``pins`` (from the node config) maps roles to GPIO numbers, all optional:
#   relay (output: the box's power-cut relay, energised = box off), door (input, pulled
#   up; the switch pulls it low while the door is CLOSED), tamper (input, pulled up; high
#   = tripped), mains (input, pulled up; the mains monitor pulls it low while mains is
#   present), box_heartbeat (input from the edge box), battery_adc (ADC pin of the
#   battery voltage divider; battery_scale volts per ADC volt), i2c_scl and i2c_sda (the
#   SHT3x climate sensor on I2C bus i2c_id, default 0).

import sys

try:
    import hal
    import sht3x
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import hal, sht3x

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
_VREF = 3.3
_WIFI_WAIT_MS = 10000


class MachineHAL(hal.HAL):
    name = "machine"

    def __init__(self, pins: "dict[str, Any]", battery_scale: float = 5.0) -> None:
        super().__init__()
        try:
            import machine
        except ImportError:
            raise hal.HALError("no machine module: not a board, use hal 'sim'")  # noqa: B904
        self._machine = machine
        self._wdt: "Any" = None
        self._scale = battery_scale
        self._clock_set = False
        try:
            self._cause = self._cause_name(machine.reset_cause())
            self._relay_pin = self._output(pins.get("relay"))
            self._door_pin = self._input(pins.get("door"))
            self._tamper_pin = self._input(pins.get("tamper"))
            self._mains_pin = self._input(pins.get("mains"))
            self._hb_pin = self._input(pins.get("box_heartbeat"))
            adc = pins.get("battery_adc")
            self._battery = machine.ADC(machine.Pin(adc)) if adc is not None else None
            scl, sda = pins.get("i2c_scl"), pins.get("i2c_sda")
            self._i2c: "Any" = None
            if scl is not None and sda is not None:
                self._i2c = machine.I2C(
                    pins.get("i2c_id", 0), scl=machine.Pin(scl), sda=machine.Pin(sda), freq=100000
                )
        except (AttributeError, ValueError, TypeError, OSError) as exc:
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
                volts = adc.read_u16() * _VREF / 65535
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

    @staticmethod
    def _level(pin: "Any") -> bool | None:
        return None if pin is None else pin.value() == 1

    def door_open(self) -> bool | None:
        return self._level(self._door_pin)

    def tamper(self) -> bool | None:
        return self._level(self._tamper_pin)

    def mains_ok(self) -> bool | None:
        level = self._level(self._mains_pin)
        return None if level is None else not level

    def battery_v(self) -> float | None:
        if self._battery is None:
            return None
        return round(self._battery.read_u16() * _VREF / 65535 * self._scale, 2)

    def box_line(self) -> bool | None:
        return self._level(self._hb_pin)

    def climate(self) -> "tuple[float, float] | None":
        if self._i2c is None:
            return None
        return sht3x.measure(self._i2c)

    def temperature_c(self) -> float | None:
        if self._temp is None:
            return None
        try:
            return round(self._temp(), 1)
        except OSError:
            return None

    def _wlan(self) -> "Any":
        import network

        return network.WLAN(network.STA_IF)

    def rssi(self) -> int | None:
        try:
            wlan = self._wlan()
            if not wlan.isconnected():
                return None
            return int(wlan.status("rssi"))
        except (ImportError, OSError, ValueError, TypeError):
            return None

    def network_up(self, cfg: "dict[str, Any]") -> bool:
        """Join the configured Wi-Fi (waiting up to 10 s) and set the clock once by NTP."""
        if not cfg.get("wifi_ssid"):
            return True  # wired, or brought up by boot.py
        try:
            import time

            wlan = self._wlan()
            if not wlan.isconnected():
                wlan.active(True)
                wlan.connect(cfg["wifi_ssid"], cfg.get("wifi_key") or None)
                start = time.ticks_ms()
                while not wlan.isconnected():
                    if time.ticks_diff(time.ticks_ms(), start) > _WIFI_WAIT_MS:
                        return False
                    self.watchdog_feed()
                    time.sleep_ms(100)
            if cfg.get("ntp_host") and not self._clock_set:
                import ntptime

                ntptime.host = cfg["ntp_host"]
                ntptime.settime()
                self._clock_set = True
            return True
        except (ImportError, OSError, ValueError) as exc:
            print("W hal: network: %s" % (exc,))
            return False

    def reset_cause(self) -> str:
        return self._cause

    def watchdog_start(self, timeout_ms: int) -> None:
        if self._wdt is None:
            # RP2040 caps the timeout at 8388 ms
            self._wdt = self._machine.WDT(timeout=min(timeout_ms, 8388))

    def watchdog_feed(self) -> None:
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self) -> None:
        self._machine.reset()
