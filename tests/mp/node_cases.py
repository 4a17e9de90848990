# Cases for the node's logic apart from the network (firmware/node.py, clock.py), under
# CPython and MicroPython. The broker side, where needed, is a FakeSocket; the board is
# the simulated one (its watchdog thread off: expiry is checked by hand).

import json
import math

from firmware import clock, config, contract, hal_sim, mqtt_packet, node, version
from tests.mp.checks import exists, read_text, tmp_dir, write_text
from tests.mp.fakes import FakeSocket, sent_packets

RAW = {"device_id": "node-0001", "broker_host": "broker.example"}
DEV = "node-0001"


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


def test_liveness_names_a_stalled_task():
    t0 = clock.ticks_add(0, -100)
    live = clock.Liveness()
    live.add("link", 1000, t0)
    live.add("box", 300, t0)
    assert live.stalled(clock.ticks_add(t0, 300)) is None
    assert live.stalled(clock.ticks_add(t0, 301)) == "box"
    live.beat("box", clock.ticks_add(t0, 300))
    assert live.stalled(clock.ticks_add(t0, 600)) is None
    live.beat("box", clock.ticks_add(t0, 1000))
    assert live.stalled(clock.ticks_add(t0, 1001)) == "link"


# ---------------------------------------------------------------- the node over a fake broker


def _node(sim_files=None, **over):
    raw = dict(RAW, heartbeat_s=5, state_dir=tmp_dir(), sim_dir=tmp_dir())
    for key, value in over.items():
        raw[key] = value
    cfg = config.load_config(raw, "")
    for name, text in (sim_files or {}).items():
        write_text(cfg["sim_dir"] + "/" + name, text)
    board = hal_sim.SimHAL(cfg["sim_dir"], wdt_thread=False)
    n = node.Node(cfg, board, None, lambda: 0.0)
    sock = FakeSocket(b"\x20\x02\x00\x00")
    n.client.connect(sock)
    sock.sent = bytearray()
    sock.auto_puback = True
    return n, sock


def _published(sock, suffix=None):
    """(topic, body) of every PUBLISH the node wrote, optionally only on one topic kind."""
    out = []
    for packet in sent_packets(sock.sent):
        if packet[0] != mqtt_packet.PUBLISH:
            continue
        topic, payload = packet[1], packet[2]
        if suffix is None or topic.endswith("/" + suffix):
            out.append((topic, contract.decode(topic, payload)[2]))
    return out


def _deliver(n, kind, body, device=DEV):
    topic, data, _q, retain = contract.encode(kind, device, body, 1767225600)
    n.on_message(topic, data, retain)


def test_node_heartbeats_count_up():
    n, sock = _node({"temp_c": "22.5"})
    n.step_cabinet(clock.ticks_ms())
    n.send_heartbeat()
    n.send_heartbeat()
    beats = _published(sock)
    assert [t for t, _b in beats] == ["camfleet/v1/node-0001/heartbeat"] * 2
    for _topic, body in beats:
        assert body["temp_c"] == 22.5 and body["interval_s"] == 5 and body["outbox"] == 0
        assert body["reset_cause"] == "power_on" and math.isfinite(body["uptime_s"])
    assert [b["seq"] for _t, b in beats] == [0, 1]
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


def test_boot_event_and_events_flushed_in_order():
    n, sock = _node()
    n.start()
    n.event("door.open", {})
    n.event("door.closed", {})
    assert n.ring.pending() == 3
    n.flush()
    got = _published(sock, "event")
    assert [b["type"] for _t, b in got] == ["node.boot", "door.open", "door.closed"]
    assert [b["seq"] for _t, b in got] == [0, 1, 2]  # the stream counts from 0
    assert all(b["epoch"] == n.ring.epoch for _t, b in got)
    assert got[0][1]["data"] == {"reset_cause": "power_on", "firmware": version.VERSION}
    assert got[1][1]["event_id"] == "node-0001-" + n.ring.epoch + "-1"
    assert n.ring.pending() == 3 and n.ring.unreceipted() == 3  # a PUBACK deletes nothing
    _deliver(n, "receipt", {"epoch": n.ring.epoch, "ranges": [[0, 2]]})
    assert n.ring.pending() == 0 and n.ring.unreceipted() == 0


def test_without_receipts_a_puback_delivers():
    n, sock = _node(receipt_timeout_s=0)
    n.event("door.open", {})
    n.flush()
    got = _published(sock, "event")
    assert [b["seq"] for _t, b in got] == [1] and "epoch" not in got[0][1]
    assert n.ring.pending() == 0


def test_receipts_forged_malformed_or_for_unsent_events_deliver_nothing():
    n, _sock = _node()
    for i in range(4):
        n.event("door.open", {"i": i})
    n.ring.mark_sent(n.ring.acked + 2)  # as if two were PUBACKed
    ep = n.ring.epoch
    before = n.rejected
    for bad in (
        {"epoch": "deadbeef", "ranges": [[0, 1]]},  # another stream
        {"epoch": ep, "ranges": [[0, 4]]},  # names seq 4, never made
        {"epoch": ep, "ranges": [[0, 2**53]]},  # huge
        {"epoch": ep, "ranges": [[1, 0]]},  # malformed
        {"epoch": ep, "ranges": [[0, 0]] * 65},  # too many
    ):
        _deliver(n, "receipt", bad)
    assert n.rejected == before + 5 and n.ring.pending() == 4
    n.on_message("camfleet/v1/node-0001/receipt", b'{"v":1,"id":"node-0001","ts":1}', False)
    n.on_message("camfleet/v1/node-0001/receipt", b"[[[", False)
    assert n.rejected == before + 7 and n.ring.pending() == 4
    _deliver(n, "receipt", {"epoch": ep, "ranges": [[2, 3]]})  # valid, but a hole before it
    assert n.ring.pending() == 4
    _deliver(n, "receipt", {"epoch": ep, "ranges": [[0, 3]]})  # only the two sent ones go
    assert n.ring.pending() == 2 and n.ring.unreceipted() == 0
    _deliver(n, "receipt", {"epoch": ep, "ranges": [[0, 1]]})  # again: nothing changes
    assert n.ring.pending() == 2


def test_no_receipt_sends_again_from_the_oldest_with_backoff():
    n, sock = _node(receipt_timeout_s=2, receipt_timeout_cap_s=5)
    n.event("door.open", {})
    n.event("door.closed", {})
    n.flush()
    t0 = n.rx_since
    n.check_receipts(clock.ticks_add(t0, 1999))
    n.flush()
    assert len(_published(sock, "event")) == 2  # not yet
    n.check_receipts(clock.ticks_add(t0, 2000))
    n.flush()
    got = _published(sock, "event")
    assert [b["seq"] for _t, b in got] == [0, 1, 0, 1] and n.rx_wait_ms == 4000
    n.check_receipts(clock.ticks_add(t0, 6000))
    assert n.rx_wait_ms == 5000  # capped
    n.flush()  # sent again
    _deliver(n, "receipt", {"epoch": n.ring.epoch, "ranges": [[0, 1]]})
    assert n.ring.pending() == 0 and n.rx_wait_ms == 2000  # a receipt resets the wait


def test_drop_report_goes_before_the_events_it_stands_for():
    n, sock = _node(ring_slots=4)
    for i in range(6):
        n.event("tamper.alarm" if i % 2 else "tamper.clear", {"i": i})
    n.flush()
    got = [b for _t, b in _published(sock, "event")]
    assert got[0]["type"] == "buffer.dropped" and got[0]["seq"] == 1
    assert got[0]["data"] == {"dropped": 2, "first_seq": 0, "last_seq": 1, "total": 2}
    assert got[0]["event_id"] == "node-0001-" + n.ring.epoch + "-1-dropped"
    assert [b["data"]["i"] for b in got[1:]] == [2, 3, 4, 5]
    assert n.ring.drop_report() is None


def test_commands_answered_refused_and_never_repeated():
    n, sock = _node()
    _deliver(n, "cmd_req", {"cid": "c-1", "cmd": "ping"})
    _deliver(n, "cmd_req", {"cid": "c-2", "cmd": "launch"})
    n.on_message(
        "camfleet/v1/node-0001/cmd/req", b'{"v": 1, "id": "node-0001", "cid": "c-3"}', False
    )
    n.on_message("camfleet/v1/node-0001/cmd/req", b"{broken", False)
    _deliver(n, "cmd_req", {"cid": "c-4", "cmd": "relay", "args": {"action": "off"}})
    _deliver(n, "cmd_req", {"cid": "c-4", "cmd": "relay", "args": {"action": "on"}})
    n.flush()
    res = [b for _t, b in _published(sock, "cmd/res")]
    assert [r["cid"] for r in res] == ["c-1", "c-2", "c-3", "c-4", "c-4"]
    assert res[0]["ok"] and res[0]["result"]["pong"] is True
    assert res[1]["error"].startswith("unknown_command: 'launch'")
    assert res[2]["error"].startswith("bad_request: bad_schema:")
    assert res[3]["result"] == res[4]["result"] == {"power": "off", "state": "held"}
    assert n.hal.relay() is True, "the repeated c-4 (with other args) was not acted on"
    assert n.received == 4 and n.rejected == 2


def test_reboot_waits_for_its_answer_and_is_not_redone_after_boot():
    n, _sock = _node()
    _deliver(n, "cmd_req", {"cid": "c-9", "cmd": "reboot"})
    assert n.reset_note == {"note": "command reboot", "cid": "c-9"} and n.replies
    config.write_json(n.state_dir + "/note.json", n.reset_note)  # what reboot() writes
    again = node.Node(n.cfg, hal_sim.SimHAL(n.cfg["sim_dir"], wdt_thread=False), None)
    again.start()
    assert not exists(n.state_dir + "/note.json")
    sock2 = FakeSocket(b"\x20\x02\x00\x00")
    again.client.connect(sock2)
    sock2.sent = bytearray()
    sock2.auto_puback = True
    _deliver(again, "cmd_req", {"cid": "c-9", "cmd": "reboot"})
    assert again.reset_note is None, "a redelivered reboot must not reboot again"
    again.flush()
    boot = _published(sock2, "event")[0][1]
    assert boot["data"]["note"] == "command reboot"
    assert _published(sock2, "cmd/res")[0][1]["result"] == {"rebooting": True}


def test_desired_config_applied_refused_and_stale():
    n, sock = _node()
    _deliver(n, "config_desired", {"version": 7, "config": {"heartbeat_s": 2, "box_id": "cam-1"}})
    assert n.version == 7 and n.settings["heartbeat_s"] == 2 and n.heartbeat.interval_ms == 2000
    assert n.box.box == "cam-1" and n._box_wanted() == "camfleet/v1/cam-1/heartbeat"
    saved = json.loads(read_text(n.state_dir + "/desired.json"))
    assert saved == {"version": 7, "config": {"heartbeat_s": 2, "box_id": "cam-1"}}
    _deliver(n, "config_desired", {"version": 8, "config": {"heartbeat_s": "soon"}})
    _deliver(n, "config_desired", {"version": 6, "config": {}})
    n.flush()
    reps = [b for _t, b in _published(sock, "config/reported")]
    assert reps[0] == {"v": 1, "id": DEV, "ts": reps[0]["ts"], "version": 7, "ok": True}
    assert reps[1]["version"] == 8 and reps[1]["ok"] is False
    assert "'heartbeat_s' must be num" in reps[1]["error"]
    assert reps[2]["version"] == 7 and reps[2]["ok"] is True, "a stale one: the applied again"
    assert n.version == 7 and n.settings["heartbeat_s"] == 2
    assert json.loads(read_text(n.state_dir + "/desired.json"))["version"] == 7
    restarted = node.Node(n.cfg, hal_sim.SimHAL(n.cfg["sim_dir"], wdt_thread=False), None)
    assert restarted.version == 7 and restarted.settings["box_id"] == "cam-1"


def test_box_heartbeats_arm_the_supervisor_and_bad_ones_are_refused():
    n, _sock = _node(box_id="cam-0001")
    n._box_topic = n._box_wanted()  # as after the subscription
    body = {"seq": 1, "kind": "agent", "interval_s": 30, "uptime_s": 5}
    bad = dict(body, seq=-1, v=1, id="cam-0001", ts=1767225600)
    n.on_message("camfleet/v1/cam-0001/heartbeat", json.dumps(bad).encode(), False)
    assert not n.box.mqtt_armed and n.rejected == 1
    _deliver(n, "heartbeat", body, device="cam-0001")
    assert n.box.mqtt_armed
    n.on_oversized("camfleet/v1/node-0001/config/desired", 99999)
    assert n.rejected == 2


def test_a_failing_task_starves_the_watchdog_and_says_which():
    n, _sock = _node()
    n.hal.watchdog_start(100000)
    now = clock.ticks_ms()
    n.live.add("cabinet", 30, now)

    def broken(_now):
        raise ValueError("sensor driver bug")

    n._task("cabinet", broken, now)
    n.feed()
    fed = n.hal._wdt_fed
    clock.sleep_ms(40)
    n._task("cabinet", broken, clock.ticks_ms())
    n.feed()
    assert n.hal._wdt_fed == fed, "not fed while a task is stalled"
    assert json.loads(read_text(n.state_dir + "/note.json")) == {"note": "stalled: cabinet"}
    n._task("cabinet", n.step_cabinet, clock.ticks_ms())  # it recovers: fed again
    n.feed()
    assert n.hal._wdt_fed != fed


def test_node_backoff_counts_attempts():
    n, _sock = _node()
    n.backoff()
    n.backoff()
    assert n.attempt == 2


def test_heartbeat_line_and_relay_wired_through_the_box_task():
    n, _sock = _node({"pin_box_heartbeat": "0"}, box_deadline_s=2, box_off_s=0.5)
    now = clock.ticks_ms()
    n.step_box(now)
    write_text(n.cfg["sim_dir"] + "/pin_box_heartbeat", "1")
    n.step_box(clock.ticks_add(now, 100))
    assert n.box.line_armed and exists(n.state_dir + "/box.json")
    n.step_box(clock.ticks_add(now, 2200))
    assert n.hal.relay() is True and read_text(n.cfg["sim_dir"] + "/pin_relay") == "1"
    n.step_box(clock.ticks_add(now, 2700))
    assert n.hal.relay() is False
    types = []
    for _ in range(10):
        item = n.ring.peek()
        if item is None:
            break
        types.append(json.loads(item[1])["type"])
        n.ring.ack(item[0])
    assert types == ["box.power_off", "box.power_on"]


def test_a_cleared_update_request_is_neither_refused_nor_counted():
    n, _sock = _node()
    n.on_message("camfleet/v1/node-0001/update/desired", b"", True)  # the server cleared it
    n.on_message("camfleet/v1/node-0001/config/desired", b"", True)  # not a kind that clears
    assert n.received == 0 and n.rejected == 1 and n.ota_msg is None
