# Cases for the cabinet's sensor events (firmware/cabinet.py), under CPython and
# MicroPython.

from firmware import cabinet

SETTINGS = {"temp_high_c": 60, "temp_low_c": -20, "humidity_high_pct": 90, "battery_low_v": 11.5}


def _readings(**over):
    r = {
        "door": False,
        "tamper": False,
        "mains": True,
        "battery_v": 13.0,
        "temp_c": 25.0,
        "humidity_pct": 40.0,
    }
    for key, value in over.items():
        r[key] = value
    return r


def _feed(cab, *readings):
    out = []
    for r in readings:
        out.extend(cab.update(r))
    return out


def test_normal_baseline_is_not_news():
    cab = cabinet.Cabinet(SETTINGS)
    assert _feed(cab, _readings(), _readings(), _readings()) == []
    assert cab.stable["door"] is False and cab.stable["temp"] == "normal"


def test_abnormal_baseline_is_reported_after_a_reset():
    cab = cabinet.Cabinet(SETTINGS)
    got = _feed(cab, _readings(door=True, mains=False, temp_c=70.0))
    got += _feed(cab, _readings(door=True, mains=False, temp_c=70.0))
    assert sorted(k for k, _d in got) == ["door.open", "power.mains_lost", "temp.high"]


def test_switches_are_debounced():
    cab = cabinet.Cabinet(SETTINGS)
    _feed(cab, _readings(), _readings())
    assert _feed(cab, _readings(door=True)) == [], "one reading is not enough"
    assert _feed(cab, _readings(door=False), _readings(door=False)) == [], "a glitch"
    got = _feed(cab, _readings(door=True), _readings(door=True), _readings(door=True))
    assert got == [("door.open", {})]
    got = _feed(cab, _readings(door=False), _readings(door=False))
    assert got == [("door.closed", {})]
    got = _feed(cab, _readings(tamper=True), _readings(tamper=True))
    got += _feed(cab, _readings(mains=False), _readings(mains=False))
    got += _feed(cab, _readings(mains=True), _readings(mains=True))
    kinds = [k for k, _d in got]
    assert kinds == ["tamper.alarm", "tamper.clear", "power.mains_lost", "power.mains_restored"]


def test_thresholds_have_hysteresis():
    cab = cabinet.Cabinet(SETTINGS)
    _feed(cab, _readings())
    temps = (59.9, 60.0, 59.0, 58.5, 61.0, 57.9, 58.5, -20.0, -18.5, -17.9)
    got = _feed(cab, *[_readings(temp_c=t) for t in temps])
    assert got == [
        ("temp.high", {"temp_c": 60.0, "limit": 60}),
        ("temp.normal", {"temp_c": 57.9}),
        ("temp.low", {"temp_c": -20.0, "limit": -20}),
        ("temp.normal", {"temp_c": -17.9}),
    ]
    got = _feed(cab, *[_readings(humidity_pct=h) for h in (90.0, 86.0, 84.9)])
    assert got == [
        ("humidity.high", {"humidity_pct": 90.0, "limit": 90}),
        ("humidity.normal", {"humidity_pct": 84.9}),
    ]
    got = _feed(cab, *[_readings(battery_v=v) for v in (11.6, 11.5, 11.7, 11.79, 11.81)])
    assert got == [
        ("power.battery_low", {"battery_v": 11.5, "limit": 11.5}),
        ("power.battery_ok", {"battery_v": 11.81, "limit": 11.5}),
    ]


def test_sensor_fault_reported_once_and_recovery_once():
    cab = cabinet.Cabinet(SETTINGS)
    _feed(cab, _readings())
    bad = _readings(temp_c=None, humidity_pct=None, climate_error="[Errno 19] ENODEV")
    got = _feed(cab, bad, bad, bad)
    assert got == [("sensor.fault", {"sensor": "climate", "error": "[Errno 19] ENODEV"})]
    got = _feed(cab, _readings(), _readings())
    assert got == [("sensor.ok", {"sensor": "climate"})]


def test_absent_sensors_say_nothing_and_settings_change_live():
    cab = cabinet.Cabinet(SETTINGS)
    empty = {"door": None, "tamper": None, "mains": None, "battery_v": None}
    assert _feed(cab, empty, empty) == []
    cab.configure(dict(SETTINGS, temp_high_c=30))
    got = _feed(cab, _readings(temp_c=31.0))
    assert got == [("temp.high", {"temp_c": 31.0, "limit": 30})]
