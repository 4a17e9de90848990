# Cases for the node's logic apart from the network (firmware/node.py, clock.py, hal.py),
# under CPython and MicroPython. The broker side, where needed, is a FakeSocket.

import json
import math

from firmware import clock, contract, hal, mqtt_packet, node, version
from tests.mp.checks import exists, raises, read_text, tmp_dir, write_text
from tests.mp.fakes import FakeSocket, sent_packets

RAW = {"device_id": "node-0001", "broker_host": "broker.example"}


def _sim(**files):
    path = tmp_dir()
    for name, text in files.items():
        write_text(path + "/" + name, text)
    return path


# ---------------------------------------------------------------- config


def test_config_defaults():
    cfg = node.load_config(dict(RAW), "/etc/camfleet")
    assert cfg["server_hostname"] == "broker.example"
    assert cfg["broker_port"] == 8883 and cfg["heartbeat_s"] == 60 and cfg["hal"] == "sim"
    assert cfg["ca"] == "/etc/camfleet/root.der" and cfg["key"] == "/etc/camfleet/key.der"
    assert cfg["reconnect_first_spread_s"] == 20.0 and cfg["reconnect_cap_s"] == 300.0
    assert sorted(cfg) == sorted(node._CONFIG)


def test_config_keeps_absolute_paths_and_given_values():
    raw = dict(RAW, ca="/pki/root.der", cert="c.der", server_hostname="localhost")
    raw["heartbeat_s"] = 2.5
    cfg = node.load_config(raw, "cfgdir")
    assert cfg["ca"] == "/pki/root.der" and cfg["cert"] == "cfgdir/c.der"
    assert cfg["server_hostname"] == "localhost" and cfg["heartbeat_s"] == 2.5
    assert node.load_config(dict(RAW), "")["cert"] == "cert.der"


def test_config_rejections():
    bad = (
        {"device_id": "node-0001"},  # broker_host missing
        {"broker_host": "b"},  # device_id missing
        dict(RAW, device_id="Node_1"),
        dict(RAW, colour="red"),  # unknown key
        dict(RAW, broker_port="8883"),
        dict(RAW, broker_port=0),
        dict(RAW, broker_port=70000),
        dict(RAW, heartbeat_s=True),
        dict(RAW, heartbeat_s=0.5),
        dict(RAW, heartbeat_s=float("nan")),
        dict(RAW, keepalive_s=0),
        dict(RAW, keepalive_s=30.5),
        dict(RAW, hal="gpio"),
        dict(RAW, pins=[1, 2]),
        dict(RAW, ca=None),
    )
    for raw in bad:
        raises(node.ConfigError, node.load_config, raw)
    raises(node.ConfigError, node.load_config, ["not", "a", "dict"])


def test_config_file_paths_relative_to_it():
    path = tmp_dir()
    write_text(path + "/node.json", json.dumps(dict(RAW, key="keys/key.der")))
    cfg = node.load_config_file(path + "/node.json")
    assert cfg["key"] == path + "/keys/key.der"
    assert cfg["sim_dir"] == path + "/sim"
    write_text(path + "/broken.json", "{")
    raises(ValueError, node.load_config_file, path + "/broken.json")


# ---------------------------------------------------------------- payloads


def test_heartbeat_body_is_a_valid_node_heartbeat():
    readings = {"reset_cause": "wdt", "temp_c": 41.5, "rssi": -61}
    body = node.heartbeat_body(7, 60, 12.5, 51200, readings, node.versions())
    topic, data, qos, retain = contract.encode("heartbeat", "node-0001", body, 1767225600)
    _dev, kind, got = contract.decode(topic, data)
    assert (kind, qos, retain) == ("heartbeat", 1, False)
    assert got["kind"] == "node" and got["seq"] == 7 and got["interval_s"] == 60
    assert got["uptime_s"] == 12.5 and got["mem_free"] == 51200
    assert got["reset_cause"] == "wdt" and got["temp_c"] == 41.5 and got["rssi"] == -61
    assert got["versions"]["firmware"] == version.VERSION


def test_heartbeat_body_leaves_out_what_the_contract_refuses():
    for readings in (
        {"temp_c": float("nan"), "rssi": True, "reset_cause": ""},
        {"temp_c": 200.0, "rssi": "-61", "reset_cause": "x" * 40},
        {"temp_c": float("inf"), "rssi": -61.5, "reset_cause": 3},
        {"temp_c": "31", "rssi": None},
    ):
        body = node.heartbeat_body(0, 1, 0.0, None, readings, {})
        for key in ("temp_c", "rssi", "reset_cause", "mem_free"):
            assert key not in body, (key, readings)
        contract.encode("heartbeat", "node-0001", body, 1767225600)


def test_status_bodies():
    assert node.status_body("online") == {"state": "online", "kind": "node"}
    off = node.status_body("offline", "stopped")
    assert off == {"state": "offline", "kind": "node", "reason": "stopped"}
    contract.encode("status", "node-0001", off, 1767225600)


def test_version_strings():
    assert node.version_string((1, 29, 0, "preview")) == "1.29.0-preview"
    assert node.version_string((1, 28, 0, "")) == "1.28.0"
    assert node.version_string((1, 28, 1)) == "1.28.1"
    vers = node.versions()
    assert vers["firmware"] == version.VERSION and vers["micropython"].count(".") >= 2


# ---------------------------------------------------------------- clock


def test_every_is_due_once_per_interval():
    t0 = clock.ticks_add(0, -1500)  # crosses the tick wrap
    every = clock.Every(1000)
    assert every.due(t0) and every.ms_left(t0) == 1000
    assert not every.due(clock.ticks_add(t0, 999))
    assert every.due(clock.ticks_add(t0, 1000))
    assert every.due(clock.ticks_add(t0, 2500))  # late: next stays on the grid at 3000
    assert not every.due(clock.ticks_add(t0, 2999))
    assert every.ms_left(clock.ticks_add(t0, 2999)) == 1
    assert every.due(clock.ticks_add(t0, 3000))
    assert every.due(clock.ticks_add(t0, 10000))  # far behind: no burst of catch-ups
    assert not every.due(clock.ticks_add(t0, 10001))
    assert every.ms_left(clock.ticks_add(t0, 10001)) == 999
    every.reset()
    assert every.due(clock.ticks_add(t0, 10002))


def test_uptime_adds_up_across_tick_wrap():
    start = clock.ticks_add(0, -300)
    up = clock.Uptime(start)
    assert up.update(clock.ticks_add(0, 200)) == 500
    assert up.update(clock.ticks_add(0, 1200)) == 1500
    assert up.update(clock.ticks_add(0, 1100)) == 1500  # a step back never subtracts


def test_unix_time_is_epoch_1970():
    now = clock.unix_time()
    assert 1.7e9 < now < 2**33
    assert clock.EPOCH_OFFSET in (0, 946684800)


# ---------------------------------------------------------------- SimHAL


def test_sim_inputs_from_files():
    path = _sim(pin_door="1", pin_box_heartbeat="0", temp_c="31.5\n", rssi="-61")
    board = hal.SimHAL(path)
    assert board.door_open() is True and board.box_heartbeat() is False
    assert board.temperature_c() == 31.5 and board.rssi() == -61
    assert board.readings() == {"reset_cause": "power_on", "temp_c": 31.5, "rssi": -61}
    write_text(path + "/pin_door", "0")
    write_text(path + "/temp_c", "warm")
    write_text(path + "/rssi", "")
    assert board.door_open() is False and board.temperature_c() is None and board.rssi() is None
    write_text(path + "/pin_door", "maybe")
    assert board.door_open() is None


def test_sim_missing_inputs_are_none():
    board = hal.SimHAL(tmp_dir() + "/fresh")  # created on demand
    assert board.door_open() is None and board.temperature_c() is None and board.rssi() is None
    assert board.readings() == {"reset_cause": "power_on"}


def test_sim_relay_written_and_kept():
    path = _sim()
    board = hal.SimHAL(path)
    assert read_text(path + "/pin_relay") == "0" and board.relay() is False
    board.set_relay(True)
    assert read_text(path + "/pin_relay") == "1" and board.relay() is True
    assert hal.SimHAL(path).relay() is True  # like a latching relay across a reboot


def test_sim_reset_cause_read_once():
    path = _sim(reset_cause="wdt")
    assert hal.SimHAL(path).reset_cause() == "wdt"
    assert not exists(path + "/reset_cause")
    assert hal.SimHAL(path).reset_cause() == "power_on"
    write_text(path + "/reset_cause", "gremlins")
    assert hal.SimHAL(path).reset_cause() == "power_on"


def test_sim_watchdog_fed_in_time_and_expired():
    path = _sim()
    board = hal.SimHAL(path, exit_on_watchdog=False)
    board.watchdog_feed()  # not armed yet: nothing happens
    board.watchdog_start(60)
    board.watchdog_feed()
    assert exists(path + "/wdt_fed")
    clock.sleep_ms(20)
    board.watchdog_feed()
    clock.sleep_ms(120)
    raises(hal.HALError, board.watchdog_feed)
    assert read_text(path + "/reset_cause") == "wdt"
    assert hal.SimHAL(path).reset_cause() == "wdt"


def test_make_hal_chooses():
    path = tmp_dir()
    assert isinstance(hal.make_hal({"hal": "sim", "sim_dir": path}), hal.SimHAL)
    assert hal.make_hal({"hal": "none"}).readings() == {"reset_cause": "unknown"}
    raises(hal.HALError, hal.make_hal, {"hal": "gpio"})
    raises(hal.HALError, hal.make_hal, {"hal": "machine", "pins": {}})  # no board here


# ---------------------------------------------------------------- the node over a fake broker


def _node(sim_files=None):
    cfg = node.load_config(dict(RAW, heartbeat_s=5), "")
    board = hal.SimHAL(_sim(**(sim_files or {})), exit_on_watchdog=False)
    n = node.Node(cfg, board, None, lambda: 0.0)
    sock = FakeSocket(b"\x20\x02\x00\x00")
    n.client.connect(sock)
    sock.sent = bytearray()
    sock.auto_puback = True
    return n, sock


def test_node_heartbeats_count_up():
    n, sock = _node({"temp_c": "22.5"})
    n.send_heartbeat()
    n.send_heartbeat()
    sent = sent_packets(sock.sent)
    assert [p[0] for p in sent] == [mqtt_packet.PUBLISH, mqtt_packet.PUBLISH]
    seqs = []
    for packet in sent:
        _t, topic, payload, qos, retain, _dup, _pid = packet
        assert topic == "camfleet/v1/node-0001/heartbeat" and qos == 1 and not retain
        body = contract.decode(topic, payload)[2]
        assert body["temp_c"] == 22.5 and body["interval_s"] == 5
        assert body["reset_cause"] == "power_on" and math.isfinite(body["uptime_s"])
        seqs.append(body["seq"])
    assert seqs == [0, 1]
    assert n.client.inflight() == []


def test_node_shutdown_says_offline_then_disconnects():
    n, sock = _node()
    n.shutdown()
    sent = sent_packets(sock.sent)
    assert sent[-1] == (mqtt_packet.DISCONNECT,)
    _t, topic, payload, _qos, retain, _dup, _pid = sent[0]
    body = contract.decode(topic, payload)[2]
    assert topic.endswith("/status") and retain
    assert body["state"] == "offline" and body["reason"] == "stopped"
    assert sock.closed and not n.client.connected


def test_node_ignores_bad_messages_and_counts_good_ones():
    n, _sock = _node()
    good = contract.encode("cmd_req", "node-0001", {"cid": "c1", "cmd": "ping"}, 1767225600)
    n.on_message(good[0], good[1], False)
    n.on_message("camfleet/v1/node-0001/cmd/req", b"{broken", False)
    n.on_message("camfleet/v1/node-0002/cmd/req", good[1], False)  # id of another node
    assert n.received == 1


def test_node_backoff_counts_attempts():
    n, _sock = _node()
    n.backoff()
    n.backoff()
    assert n.attempt == 2
