# Cases for the simulated board (firmware/hal_sim.py), the SHT3x driver (sht3x.py) and
# the HAL choice (hal.py), under CPython and MicroPython.

from firmware import clock, hal, hal_sim, sht3x
from tests.mp.checks import exists, raises, read_text, tmp_dir, write_text


def _sim(**files):
    path = tmp_dir()
    for name, text in files.items():
        write_text(path + "/" + name, text)
    return path


def _board(path):
    return hal_sim.SimHAL(path, wdt_thread=False)


def test_sht3x_crc_and_decoding_match_the_datasheet():
    assert sht3x.crc8(b"\xbe\xef") == 0x92  # datasheet 4.12
    assert sht3x.crc8(b"\x00\x00") == 0x81
    # raw 0x6666 -> -45 + 175 * 26214 / 65535 = 25.0 C; 0x8000 -> 50.0 % RH
    t_hi, t_lo, h_hi, h_lo = 0x66, 0x66, 0x80, 0x00
    raw = bytes([t_hi, t_lo, sht3x.crc8(b"\x66\x66"), h_hi, h_lo, sht3x.crc8(b"\x80\x00")])
    assert sht3x.decode(raw) == (25.0, 50.0)
    for temp, rh in ((24.5, 40.0), (-40.0, 0.0), (85.25, 99.5)):
        assert sht3x.decode(sht3x.encode(temp, rh)) == (temp, rh)


def test_sht3x_refuses_corrupt_bytes():
    good = sht3x.encode(20.0, 50.0)
    raises(OSError, sht3x.decode, good[:5])
    raises(OSError, sht3x.decode, bytes([good[0] ^ 1]) + good[1:])
    raises(OSError, sht3x.decode, good[:5] + bytes([good[5] ^ 0xFF]))


def test_sim_inputs_from_files():
    path = _sim(pin_door="1", pin_tamper="0", pin_mains="1", pin_box_heartbeat="0", rssi="-61")
    write_text(path + "/battery_v", "12.7\n")
    write_text(path + "/mcu_temp_c", "41.5")
    board = _board(path)
    assert board.door_open() is True and board.tamper() is False and board.mains_ok() is True
    assert board.box_line() is False and board.battery_v() == 12.7
    assert board.temperature_c() == 41.5 and board.rssi() == -61
    write_text(path + "/pin_door", "0")
    write_text(path + "/battery_v", "full")
    write_text(path + "/rssi", "")
    assert board.door_open() is False and board.battery_v() is None and board.rssi() is None
    write_text(path + "/pin_door", "maybe")
    assert board.door_open() is None


def test_sim_missing_inputs_are_none():
    board = _board(tmp_dir() + "/fresh")  # created on demand
    assert board.door_open() is None and board.mains_ok() is None and board.climate() is None
    assert board.temperature_c() is None and board.rssi() is None and board.box_line() is None
    assert board.reset_cause() == "power_on"


def test_sim_climate_sensor_goes_through_the_driver():
    path = _sim(temp_c="31.5", humidity_pct="55.25")
    board = _board(path)
    assert board.climate() == (31.5, 55.25)
    write_text(path + "/i2c_error", "")
    raises(OSError, board.climate)
    raises(OSError, board.i2c.readfrom, 0x45, 6)  # nothing at another address


def test_sim_relay_written_logged_and_released_at_reset():
    path = _sim()
    board = _board(path)
    assert read_text(path + "/pin_relay") == "0" and board.relay() is False
    board.set_relay(True)
    board.set_relay(True)  # no change: not logged again
    assert read_text(path + "/pin_relay") == "1" and board.relay() is True
    lines = read_text(path + "/relay_log").split("\n")
    assert [ln.split(" ")[1] for ln in lines if ln] == ["0", "1"]
    again = _board(path)  # a reset: the pin comes up released, the box powered
    assert again.relay() is False and read_text(path + "/pin_relay") == "0"
    lines = read_text(path + "/relay_log").split("\n")
    assert [ln.split(" ")[1] for ln in lines if ln] == ["0", "1", "0"]


def test_sim_reset_cause_read_once_and_hang_cleared_at_boot():
    path = _sim(reset_cause="wdt", i2c_hang="")
    assert _board(path).reset_cause() == "wdt"
    assert not exists(path + "/reset_cause") and not exists(path + "/i2c_hang")
    assert _board(path).reset_cause() == "power_on"
    write_text(path + "/reset_cause", "gremlins")
    assert _board(path).reset_cause() == "power_on"


def test_sim_watchdog_fed_in_time_and_expired():
    path = _sim()
    board = _board(path)
    board.watchdog_feed()  # not armed yet: nothing happens
    board.watchdog_start(60)
    board.watchdog_feed()
    assert exists(path + "/wdt_fed")
    clock.sleep_ms(20)
    board.watchdog_feed()
    assert not board.expired(clock.ticks_ms())
    clock.sleep_ms(120)
    assert board.expired(clock.ticks_ms())
    raises(hal.HALError, board.watchdog_feed)
    assert read_text(path + "/reset_cause") == "wdt"
    assert _board(path).reset_cause() == "wdt"


def test_sim_reset_is_noted_for_the_next_boot():
    path = _sim()
    raises(hal.HALError, _board(path).reset)
    assert _board(path).reset_cause() == "soft"


def test_make_hal_chooses():
    path = tmp_dir()
    assert isinstance(hal.make_hal({"hal": "sim", "sim_dir": path}), hal_sim.SimHAL)
    none = hal.make_hal({"hal": "none"})
    assert none.reset_cause() == "unknown" and none.climate() is None and none.relay() is False
    assert none.network_up({}) is True
    raises(hal.HALError, hal.make_hal, {"hal": "gpio"})
    raises(hal.HALError, hal.make_hal, {"hal": "machine", "pins": {}})  # no board here
