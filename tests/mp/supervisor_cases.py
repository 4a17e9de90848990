# Cases for the box supervisor's decisions (firmware/supervisor.py), under CPython and
# MicroPython. Time is given, not waited for: ticks in ms (across the tick wrap) and Unix
# seconds for the daily limit.

from firmware import clock, supervisor

T0 = clock.ticks_add(0, -5000)  # five seconds before the tick counter wraps
U0 = 1767225600


def _settings(**over):
    s = {
        "box_id": "cam-0001",
        "box_deadline_s": 10,
        "box_off_s": 2,
        "box_boot_s": 5,
        "box_max_cycles": 3,
    }
    for key, value in over.items():
        s[key] = value
    return s


def _at(ms):
    return clock.ticks_add(T0, ms)


def _sup(saved=None, **over):
    sup = supervisor.Supervisor(_settings(**over), saved, T0)
    sup.link(True, T0)
    sup.heard(T0)
    return sup


def _run(sup, start_ms, end_ms, step_ms=100):
    """Step from start to end; returns [(ms, event type, data)] and the relay changes."""
    out, relay = [], []
    last = sup.relay
    for ms in range(start_ms, end_ms + 1, step_ms):
        for kind, data in sup.step(_at(ms), U0 + ms // 1000):
            out.append((ms, kind, data))
        if sup.relay != last:
            last = sup.relay
            relay.append((ms, last))
    return out, relay


def test_cut_after_the_deadline_not_before():
    sup = _sup()
    events, relay = _run(sup, 0, 9900)
    assert events == [] and relay == [] and not sup.relay
    events, relay = _run(sup, 10000, 11900)
    assert relay == [(10000, True)]
    assert events[0] == (
        10000,
        "box.power_off",
        {"by": "supervisor", "silent_s": 10, "cycle": 1, "today": 1, "limit": 3},
    )
    events, relay = _run(sup, 12000, 12000)
    assert relay == [(12000, False)] and events == [(12000, "box.power_on", {"by": "supervisor"})]
    assert sup.state == supervisor.GRACE and sup.dirty


def test_backoff_doubles_the_grace_and_the_limit_holds():
    sup = _sup(box_max_cycles=3)
    events, relay = _run(sup, 0, 60000)
    cuts = [ms for ms, on in relay if on]
    # deadline 10 s; then off 2 s + grace 5 s, off 2 s + grace 10 s
    assert cuts == [10000, 17000, 29000], cuts
    kinds = [k for _ms, k, _d in events]
    assert kinds == [
        "box.power_off",
        "box.power_on",
        "box.power_off",
        "box.power_on",
        "box.power_off",
        "box.power_on",
        "box.cycle_limit",
    ]
    limit = events[-1]
    assert limit[0] == 31000 + 20000 and limit[2] == {"silent_s": 51, "today": 3, "limit": 3}
    assert len(sup.cycles) == 3 and not sup.relay


def test_daily_limit_is_a_rolling_24_hours_and_survives_a_reset():
    saved = {"box": "cam-0001", "mqtt": True, "line": False, "cycles": [U0 - 3600, U0 - 90000]}
    sup = _sup(saved=saved, box_max_cycles=2)
    assert sup.mqtt_armed and sup.cycles == [U0 - 3600, U0 - 90000]
    events, _relay = _run(sup, 0, 40000)
    assert [k for _ms, k, _d in events][:2] == ["box.power_off", "box.power_on"]
    assert events[0][2]["today"] == 2, "the cycle 25 h ago no longer counts"
    assert [k for _ms, k, _d in events][-1] == "box.cycle_limit"
    assert sup.state_dict() == {
        "box": "cam-0001",
        "mqtt": True,
        "line": False,
        "cycles": [U0 - 3600, U0 + 10],
    }
    # a state for another box is not taken over
    other = supervisor.Supervisor(_settings(box_id="cam-0002"), saved, T0)
    assert other.cycles == [] and not other.mqtt_armed


def test_zero_limit_never_cuts():
    sup = _sup(box_max_cycles=0)
    events, relay = _run(sup, 0, 30000)
    assert relay == [] and [k for _ms, k, _d in events] == ["box.cycle_limit"]


def test_box_coming_back_ends_the_backoff():
    sup = _sup()
    _run(sup, 0, 12000)  # cut at 10 s, power on at 12 s
    sup.heard(_at(14000))
    events, relay = _run(sup, 14000, 14000)
    assert events == [(14000, "box.back", {"cycles": 1})] and sup.failed == 0
    events, relay = _run(sup, 14100, 23900)
    assert relay == [], "a full deadline again after the box came back"
    events, relay = _run(sup, 24000, 24000)
    assert relay == [(24000, True)] and events[0][2]["cycle"] == 1


def test_never_heard_box_and_blind_link_never_cut():
    sup = supervisor.Supervisor(_settings(), None, T0)
    sup.link(True, T0)
    events, relay = _run(sup, 0, 60000, 1000)
    assert events == [] and relay == [], "not armed: a box never heard is not cut"
    sup = _sup()
    sup.link(False, _at(5000))  # our own link is down: the MQTT channel is blind
    events, relay = _run(sup, 5000, 60000, 1000)
    assert events == [] and relay == []
    sup.link(True, _at(60000))  # back: the box gets a whole deadline from now
    events, relay = _run(sup, 60000, 69900)
    assert relay == []
    events, relay = _run(sup, 70000, 70000)
    assert relay == [(70000, True)]


def test_heartbeat_line_alone_while_offline():
    sup = supervisor.Supervisor(_settings(box_id=""), None, T0)
    assert sup.silence_ms(T0) is None
    for i, ms in enumerate(range(0, 5000, 500)):  # the box toggles its line
        sup.line(bool(i % 2), _at(ms))
        assert sup.step(_at(ms), U0) == []
    assert sup.line_armed and sup.dirty
    events, relay = _run(sup, 5000, 14400)
    assert relay == []
    events, relay = _run(sup, 14500, 14500)
    assert relay == [(14500, True)] and events[0][2]["silent_s"] == 10
    flat = supervisor.Supervisor(_settings(box_id=""), None, T0)
    for ms in range(0, 60000, 500):  # a wired line nobody toggles: never armed
        flat.line(True, _at(ms))
        assert flat.step(_at(ms), U0) == []


def test_commands_act_at_once_and_are_not_limited():
    sup = _sup(box_max_cycles=0)
    events = sup.command("off", 2, _at(1000))
    assert events == [("box.power_off", {"by": "command"})] and sup.relay
    assert sup.state == supervisor.HELD
    assert _run(sup, 1000, 60000, 1000)[1] == [], "held off until told otherwise"
    events = sup.command("on", 2, _at(61000))
    assert events == [("box.power_on", {"by": "command"})] and not sup.relay
    assert sup.command("on", 2, _at(61100)) == [], "already on: nothing to do"
    events = sup.command("cycle", 1.5, _at(62000))
    assert events == [("box.power_off", {"by": "command", "off_s": 1.5})] and sup.relay
    events, relay = _run(sup, 62000, 63500)
    assert relay == [(63500, False)] and events == [(63500, "box.power_on", {"by": "command"})]
    assert sup.cycles == []


def test_new_box_id_starts_from_scratch():
    sup = _sup()
    _run(sup, 0, 10000)
    assert sup.cycles
    sup.configure(_settings(box_id="cam-0002"), _at(10000))
    assert sup.cycles == [] and not sup.mqtt_armed and sup.box == "cam-0002"
