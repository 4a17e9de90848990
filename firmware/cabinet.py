# The cabinet's sensors turned into events: no I/O, only readings in and events out.
#
# Switches (door, tamper, mains present) are debounced: a new level must be read twice in
# a row before it counts. Analog values (temperature, humidity, battery voltage) cross a
# threshold with hysteresis, so a value hovering at the limit does not flood the fleet.
# The first reading after boot sets the baseline; only an abnormal baseline (door open,
# tamper, mains lost, out of range) is reported, so the fleet learns of it after a reset.
# A climate sensor that fails is reported once, and once more when it reads again.
#
# Event types: door.open / door.closed, tamper.alarm / tamper.clear, power.mains_lost /
# power.mains_restored, power.battery_low / power.battery_ok, temp.high / temp.low /
# temp.normal, humidity.high / humidity.normal, sensor.fault / sensor.ok.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Events = list[tuple[str, dict[str, Any]]]

TEMP_HYST = 2.0  # degrees C back inside the band before "normal"
HUMIDITY_HYST = 5.0  # percentage points
BATTERY_HYST = 0.3  # volts

# switch name -> (reading key, event when True, event when False, True is abnormal)
_SWITCHES = (
    ("door", "door.open", "door.closed", True),
    ("tamper", "tamper.alarm", "tamper.clear", True),
    ("mains", "power.mains_restored", "power.mains_lost", False),
)


class Cabinet:
    def __init__(self, settings: "dict[str, Any]") -> None:
        self.settings = settings
        self.stable: "dict[str, Any]" = {}  # switch -> debounced level; band names
        self._candidate: "dict[str, Any]" = {}
        self.fault: str | None = None

    def configure(self, settings: "dict[str, Any]") -> None:
        self.settings = settings

    def update(self, r: "dict[str, Any]") -> "Events":
        """Events for a set of readings: keys door, tamper, mains (bool or None), temp_c,
        humidity_pct, battery_v (number or None), climate_error (str or None)."""
        events: "Events" = []
        for name, on_true, on_false, abnormal in _SWITCHES:
            self._switch(name, r.get(name), on_true, on_false, abnormal, events)
        self._climate(r, events)
        s = self.settings
        volts = r.get("battery_v")
        if volts is not None:
            low = s["battery_low_v"]
            band = self._band("battery", volts, None, low, BATTERY_HYST)
            if band is not None:
                kind = "power.battery_low" if band == "low" else "power.battery_ok"
                events.append((kind, {"battery_v": volts, "limit": low}))
        return events

    def _switch(
        self, name: str, level: object, on_true: str, on_false: str, abnormal: bool, ev: "Events"
    ) -> None:
        if level is None:
            return
        if self._candidate.get(name) != level:
            self._candidate[name] = level  # first sight of a new level: wait for a second
            return
        old = self.stable.get(name)
        if old == level:
            return
        self.stable[name] = level
        if old is None and level != abnormal:
            return  # a normal baseline is not news
        ev.append((on_true if level else on_false, {}))

    def _climate(self, r: "dict[str, Any]", ev: "Events") -> None:
        error = r.get("climate_error")
        if error:
            if self.fault is None:
                ev.append(("sensor.fault", {"sensor": "climate", "error": str(error)[:64]}))
            self.fault = str(error)
            return
        if self.fault is not None and r.get("temp_c") is not None:
            self.fault = None
            ev.append(("sensor.ok", {"sensor": "climate"}))
        s = self.settings
        temp = r.get("temp_c")
        if temp is not None:
            band = self._band("temp", temp, s["temp_high_c"], s["temp_low_c"], TEMP_HYST)
            if band is not None:
                data = {"temp_c": temp}
                if band != "normal":
                    data["limit"] = s["temp_%s_c" % band]
                ev.append(("temp." + band, data))
        rh = r.get("humidity_pct")
        if rh is not None:
            high = s["humidity_high_pct"]
            band = self._band("humidity", rh, high, None, HUMIDITY_HYST)
            if band is not None:
                data = {"humidity_pct": rh}
                if band == "high":
                    data["limit"] = high
                ev.append(("humidity." + band, data))

    def _band(
        self, name: str, value: float, high: float | None, low: float | None, hyst: float
    ) -> str | None:
        """The band (high, low, normal) ``value`` is now in, when it changed; else None."""
        old = self.stable.get(name)
        if high is not None and value >= high:
            band = "high"
        elif low is not None and value <= low:
            band = "low"
        elif old == "high" and high is not None and value > high - hyst:
            band = "high"
        elif old == "low" and low is not None and value < low + hyst:
            band = "low"
        else:
            band = "normal"
        if band == old:
            return None
        self.stable[name] = band
        if old is None and band == "normal":
            return None
        return band
