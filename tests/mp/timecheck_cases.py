# Cases for firmware/timecheck.py, under CPython and MicroPython (tests/mp/run.py).

from firmware import timecheck as T

FLOOR = T.RELEASE_FLOOR


def test_1970_is_not_trusted():
    assert not T.clock_ok(0, FLOOR, None)
    assert not T.clock_ok(86400 * 365, FLOOR, None)
    assert T.seconds_behind(0, FLOOR, None) == FLOOR


def test_after_release_is_trusted():
    assert T.clock_ok(FLOOR, FLOOR, None)
    assert T.clock_ok(FLOOR + 86400, FLOOR, None)
    assert T.seconds_behind(FLOOR + 1, FLOOR, None) == 0


def test_last_good_raises_the_floor():
    last = FLOOR + 30 * 86400
    assert not T.clock_ok(FLOOR + 86400, FLOOR, last)  # set back by a power cut
    assert T.clock_ok(last, FLOOR, last)
    assert T.clock_ok(last - T.SLACK_S, FLOOR, last)  # within the slack
    assert not T.clock_ok(last - T.SLACK_S - 1, FLOOR, last)


def test_an_old_last_good_does_not_lower_the_floor():
    assert T.floor(FLOOR, FLOOR - 86400) == FLOOR
    assert not T.clock_ok(FLOOR - 10, FLOOR, FLOOR - 86400)


def test_parse_last_good():
    assert T.parse_last_good("1795900000.5\n") == 1795900000.5
    assert T.parse_last_good("") is None
    assert T.parse_last_good("yesterday") is None
    assert T.parse_last_good("-5") is None
    assert T.parse_last_good("nan") is None
    assert T.parse_last_good(None) is None
