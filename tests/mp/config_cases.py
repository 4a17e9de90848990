# Cases for firmware/config.py (the node's config file and the fleet's desired config),
# under CPython and MicroPython.

import json

from firmware import config
from tests.mp.checks import raises, read_text, tmp_dir, write_text

RAW = {"device_id": "node-0001", "broker_host": "broker.example"}


def test_config_defaults():
    cfg = config.load_config(dict(RAW), "/etc/camfleet")
    assert cfg["server_hostname"] == "broker.example"
    assert cfg["broker_port"] == 8883 and cfg["heartbeat_s"] == 60 and cfg["hal"] == "sim"
    assert cfg["ca"] == "/etc/camfleet/root.der" and cfg["key"] == "/etc/camfleet/key.der"
    assert cfg["state_dir"] == "/etc/camfleet/state" and cfg["ring_slots"] == 64
    assert cfg["reconnect_first_spread_s"] == 20.0 and cfg["reconnect_cap_s"] == 30.0
    assert cfg["box_id"] == "" and cfg["box_max_cycles"] == 3 and cfg["max_packet"] == 4096
    assert sorted(cfg) == sorted(config.names(config.LOCAL) + config.names(config.SETTINGS))
    assert cfg["pins"] == {} and cfg["wifi_key"] == "" and cfg["reconnect_base_s"] == 1.0


def test_config_keeps_absolute_paths_and_given_values():
    raw = dict(RAW, ca="/pki/root.der", cert="c.der", server_hostname="localhost")
    raw["heartbeat_s"] = 2.5
    raw["box_id"] = "cam-0001"
    cfg = config.load_config(raw, "cfgdir")
    assert cfg["ca"] == "/pki/root.der" and cfg["cert"] == "cfgdir/c.der"
    assert cfg["server_hostname"] == "localhost" and cfg["heartbeat_s"] == 2.5
    assert cfg["box_id"] == "cam-0001"
    assert config.load_config(dict(RAW), "")["cert"] == "cert.der"


def test_config_rejections():
    bad = (
        ({"device_id": "node-0001"}, "missing key 'broker_host'"),
        ({"broker_host": "b"}, "missing key 'device_id'"),
        (dict(RAW, device_id="Node_1"), "invalid device_id"),
        (dict(RAW, colour="red"), "unknown config key 'colour'"),
        (dict(RAW, broker_port="8883"), "'broker_port' must be int"),
        (dict(RAW, broker_port=0), "'broker_port' must be in 1..65535"),
        (dict(RAW, broker_port=70000), "'broker_port' must be in"),
        (dict(RAW, heartbeat_s=True), "'heartbeat_s' must be num"),
        (dict(RAW, heartbeat_s=0.5), "'heartbeat_s' must be in"),
        (dict(RAW, heartbeat_s=float("nan")), "'heartbeat_s' must be num"),
        (dict(RAW, keepalive_s=30.5), "'keepalive_s' must be int"),
        (dict(RAW, hal="gpio"), "hal must be one of"),
        (dict(RAW, pins=[1, 2]), "'pins' must be dict"),
        (dict(RAW, ca=None), "'ca' must be str"),
        (dict(RAW, box_id="node-0001"), "'box_id' is this node itself"),
        (dict(RAW, box_id="cam/#"), "'box_id' 'cam/#' is not a device id"),
        (dict(RAW, ring_slots=2), "'ring_slots' must be in 4..4096"),
        (dict(RAW, temp_low_c=70), "'temp_low_c' must be below 'temp_high_c'"),
        (dict(RAW, wifi_ssid="x" * 300), "'wifi_ssid' is too long"),
    )
    for raw, reason in bad:
        exc = raises(config.ConfigError, config.load_config, raw)
        assert reason in str(exc), (reason, str(exc))
    raises(config.ConfigError, config.load_config, ["not", "a", "dict"])


def test_config_file_paths_relative_to_it():
    path = tmp_dir()
    write_text(path + "/node.json", json.dumps(dict(RAW, key="keys/key.der")))
    cfg = config.load_config_file(path + "/node.json")
    assert cfg["key"] == path + "/keys/key.der"
    assert cfg["sim_dir"] == path + "/sim" and cfg["state_dir"] == path + "/state"
    write_text(path + "/broken.json", "{")
    raises(ValueError, config.load_config_file, path + "/broken.json")


def test_desired_settings_start_from_the_boot_values():
    boot = config.boot_settings(config.load_config(dict(RAW, heartbeat_s=30), ""))
    assert sorted(boot) == sorted(config.names(config.SETTINGS))
    got = config.desired_settings(boot, {"box_id": "cam-0001", "box_deadline_s": 120}, "node-0001")
    assert got["box_id"] == "cam-0001" and got["box_deadline_s"] == 120
    assert got["heartbeat_s"] == 30, "a key left out takes its boot value"
    again = config.desired_settings(boot, {}, "node-0001")
    assert again == boot and again is not boot
    assert boot["box_id"] == "", "the boot values are not changed"


def test_desired_settings_refused_whole():
    boot = config.boot_settings(config.load_config(dict(RAW), ""))
    bad = (
        ({"heartbeat_s": 10, "colour": "red"}, "unknown setting 'colour'"),
        ({"broker_host": "evil"}, "'broker_host' can only be set in the node's config file"),
        ({"wifi_key": "secret"}, "can only be set in the node's config file"),
        ({"heartbeat_s": "10"}, "'heartbeat_s' must be num"),
        ({"box_max_cycles": 2.5}, "'box_max_cycles' must be int"),
        ({"box_max_cycles": 49}, "'box_max_cycles' must be in 0..48"),
        ({"box_id": "node-0001"}, "'box_id' is this node itself"),
        ({"temp_high_c": -30}, "'temp_low_c' must be below 'temp_high_c'"),
        ({"box_off_s": float("inf")}, "'box_off_s' must be num"),
    )
    for desired, reason in bad:
        exc = raises(config.ConfigError, config.desired_settings, boot, desired, "node-0001")
        assert reason in str(exc), (reason, str(exc))
    raises(config.ConfigError, config.desired_settings, boot, [1], "node-0001")


def test_spec_lines():
    assert config.spec("broker_port int 8883 1 65535") == ("broker_port", "int", 8883, 1, 65535)
    assert config.spec("box_off_s num 10 0.5 600") == ("box_off_s", "num", 10, 0.5, 600)
    assert config.spec("device_id str") == ("device_id", "str", None, None, None)
    assert config.spec("box_id str -") == ("box_id", "str", "", None, None)
    for line in config.LOCAL + config.SETTINGS:
        _name, want, default, lo, hi = config.spec(line)
        assert want in ("str", "int", "num", "dict"), line
        assert (lo is None) == (hi is None), line
        if lo is not None and default is not None:
            assert lo <= default <= hi, line


def test_state_files_round_trip_and_bad_ones_read_as_none():
    path = tmp_dir()
    config.write_json(path + "/s.json", {"version": 4, "config": {"heartbeat_s": 5}})
    assert config.read_json(path + "/s.json") == {"version": 4, "config": {"heartbeat_s": 5}}
    assert json.loads(read_text(path + "/s.json"))["version"] == 4
    assert config.read_json(path + "/missing.json") is None
    write_text(path + "/torn.json", '{"version": 4, "conf')
    assert config.read_json(path + "/torn.json") is None
