# Cases for firmware/contract.py, run by pytest under CPython and by tests/mp/run.py
# under MicroPython (the subset both run: no pytest, plain asserts, helpers from checks).

from firmware import contract
from firmware import receipts as R
from tests.mp.checks import raises, rejects

C = contract
DEV = "node-0001"
TS = 1767225600.5

# A minimal valid body for every kind.
BODIES = {
    "status": {"state": "online", "kind": "node"},
    "heartbeat": {"seq": 0, "kind": "node", "interval_s": 60, "uptime_s": 1.5},
    "event": {"seq": 3, "event_id": "e-1", "type": "door_open", "data": {"door": True}},
    "cmd_res": {"cid": "c-1", "ok": True, "result": {}},
    "config_reported": {"version": 2, "ok": False, "error": "bad zone"},
    "cmd_req": {"cid": "c-1", "cmd": "reboot", "args": {}, "deadline": TS + 60},
    "config_desired": {"version": 2, "config": {"heartbeat_s": 30}},
    "update_desired": {
        "campaign": "c-7",
        "artifact": "firmware",
        "release": "0.2.0",
        "target": "firmware/camfleet-node-0.2.0.bundle",
        "trial_s": 120,
    },
    "update_state": {
        "campaign": "c-7",
        "artifact": "firmware",
        "release": "0.2.0",
        "state": "downloading",
        "progress": 12.5,
    },
    "receipt": {"epoch": "9f3a01c2", "ranges": [[0, 41], [43, 43]]},
}


def _payload(which, **changes):
    body = {"v": C.PROTOCOL_VERSION, "id": DEV, "ts": TS}
    body.update(BODIES[which])
    for key, value in changes.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    return body


def _hb(**changes):
    return _payload("heartbeat", **changes)


# ---------------------------------------------------------------- device ids


def test_valid_device_ids():
    for good in ("abc", "node-0001", "cam-12-north", "a" * 64, "0a9", "a-b"):
        assert C.valid_device_id(good), good
        assert C.check_device_id(good) == good


def test_invalid_device_ids():
    bad = (
        "ab",
        "a" * 65,
        "Node-1",
        "-abc",
        "abc-",
        "a_b",
        "a.b",
        "a/b",
        "a b",
        "",
        "a+b",
        "a\nb",
        "ab\u00e9",
        "--a",
        "a--",
    )
    for value in bad:
        assert not C.valid_device_id(value), value
    for value in (None, 123, b"abc", ["abc"]):
        assert not C.valid_device_id(value), value
    rejects(C.R_IDENTITY, C.check_device_id, "a_b")


def test_server_identity_can_never_be_a_device():
    assert not C.valid_device_id(C.SERVER_IDENTITY)


# ---------------------------------------------------------------- topics


def test_topic_for_every_kind():
    want = {
        "status": "status",
        "heartbeat": "heartbeat",
        "event": "event",
        "cmd_res": "cmd/res",
        "config_reported": "config/reported",
        "cmd_req": "cmd/req",
        "config_desired": "config/desired",
        "update_desired": "update/desired",
        "update_state": "update/state",
        "receipt": "receipt",
    }
    assert sorted(C.KINDS) == sorted(want)
    for kind, suffix in want.items():
        assert C.topic(DEV, kind) == "camfleet/v1/node-0001/" + suffix


def test_topic_rejects_unknown_kind_and_bad_id():
    rejects(C.R_TOPIC, C.topic, DEV, "telemetry")
    rejects(C.R_IDENTITY, C.topic, "Bad_Id", "status")
    rejects(C.R_IDENTITY, C.topic, "+", "status")


def test_parse_topic_roundtrip():
    for kind in C.KINDS:
        assert C.parse_topic(C.topic(DEV, kind)) == (DEV, kind)


def test_parse_topic_rejections():
    bad = (
        "camfleet/v2/node-0001/status",
        "camfleet/v1",
        "camfleet/v1/",
        "camfleet/v1/node-0001",
        "camfleet/v1/node-0001/telemetry",
        "camfleet/v1/node-0001/status/extra",
        "camfleet/v1/node-0001/cmd",
        "camfleet/v1/Node_1/status",
        "camfleet/v1/+/status",
        "camfleet/v1//status",
        "/camfleet/v1/node-0001/status",
    )
    for name in bad:
        rejects(C.R_TOPIC, C.parse_topic, name)
    rejects(C.R_TOPIC, C.parse_topic, None)
    rejects(C.R_TOPIC, C.parse_topic, b"camfleet/v1/node-0001/status")


def test_server_subscriptions_cover_up_kinds_only():
    subs = C.server_subscriptions()
    up = [k for k in C.KINDS if C.KINDS[k][1] == C.UP]
    assert len(subs) == len(up)
    for filt, qos in subs:
        assert filt.startswith("$share/" + C.SERVER_SHARE_GROUP + "/camfleet/v1/+/"), filt
        assert qos == 1
    plain = [f for f, _q in C.server_subscriptions(shared=False)]
    assert "camfleet/v1/+/heartbeat" in plain
    assert "camfleet/v1/+/cmd/req" not in plain


def test_acl_patterns_write_up_read_down():
    acl = C.device_acl_patterns()
    assert ("write", "camfleet/v1/%u/heartbeat") in acl
    assert ("write", "camfleet/v1/%u/status") in acl
    assert ("read", "camfleet/v1/%u/cmd/req") in acl
    assert ("read", "camfleet/v1/%u/config/desired") in acl
    assert len(acl) == len(C.KINDS)
    for access, pattern in acl:
        assert access in ("read", "write") and "%c" not in pattern


# ---------------------------------------------------------------- encode / decode


def test_encode_decode_roundtrip_every_kind():
    for kind in C.KINDS:
        topic, data, qos, retain = C.encode(kind, DEV, BODIES[kind], TS)
        assert topic == C.topic(DEV, kind)
        assert isinstance(data, bytes)
        assert (qos, retain) == (C.KINDS[kind][2], C.KINDS[kind][3])
        device, got_kind, body = C.decode(topic, data)
        assert (device, got_kind) == (DEV, kind)
        assert body["v"] == C.PROTOCOL_VERSION and body["id"] == DEV and body["ts"] == TS
        for key in BODIES[kind]:
            assert body[key] == BODIES[kind][key], (kind, key)


def test_status_is_retained_heartbeat_is_not():
    assert C.encode("status", DEV, BODIES["status"], TS)[3] is True
    assert C.encode("heartbeat", DEV, BODIES["heartbeat"], TS)[3] is False


def test_encode_sets_v_id_ts_over_body():
    body = {"state": "online", "kind": "node", "v": 9, "id": "other-1", "ts": -1}
    _t, data, _q, _r = C.encode("status", DEV, body, TS)
    got = C.decode(C.topic(DEV, "status"), data)[2]
    assert (got["v"], got["id"], got["ts"]) == (1, DEV, TS)
    assert body["v"] == 9, "encode must not change the caller's dict"


def test_decode_accepts_str_bytearray_and_unknown_fields():
    import json

    text = json.dumps(_hb(extra_field={"x": 1}))
    topic = C.topic(DEV, "heartbeat")
    assert C.decode(topic, text)[2]["extra_field"] == {"x": 1}
    assert C.decode(topic, bytearray(text.encode()))[2]["seq"] == 0


def test_decode_bad_topic():
    rejects(C.R_TOPIC, C.decode, "camfleet/v1/node-0001/nope", b"{}")


def test_decode_oversized_before_parsing():
    limit = C.KINDS["heartbeat"][4]
    # not JSON at all: the size check must come first
    rejects(C.R_SIZE, C.decode, C.topic(DEV, "heartbeat"), b"x" * (limit + 1))
    rejects(C.R_SIZE, C.decode, C.topic(DEV, "status"), b" " * 1025)


def test_encode_oversized():
    # unknown fields pass the schema, so only the size limit (1024 for status) stops this
    big = {"state": "online", "kind": "node", "note": "x" * 1000}
    rejects(C.R_SIZE, C.encode, "status", DEV, big, TS)
    big["note"] = "x" * 900
    assert len(C.encode("status", DEV, big, TS)[1]) <= C.KINDS["status"][4]


def test_decode_bad_json():
    topic = C.topic(DEV, "heartbeat")
    for payload in (b"{", b"not json", b"", b"\xff\xfe{}", b'{"a": 1', b"{'a': 1}", b"[1,"):
        rejects(C.R_JSON, C.decode, topic, payload)


def test_lenient_json_is_still_refused():
    # MicroPython's json accepts some malformed separators ('{"a": }' gives {}); such a
    # payload then fails the schema instead, so it is refused by both interpreters.
    topic = C.topic(DEV, "heartbeat")
    for payload in (b'{"a": }', b'{"a" 1}', b"{,}"):
        exc = raises(C.ProtocolError, C.decode, topic, payload)
        assert exc.reason in (C.R_JSON, C.R_SCHEMA), exc.reason


def test_decode_empty_status_is_schema_error():
    rejects(C.R_SCHEMA, C.decode, C.topic(DEV, "status"), b"")


def test_decode_not_an_object():
    rejects(C.R_SCHEMA, C.decode, C.topic(DEV, "heartbeat"), b"[1, 2]")
    rejects(C.R_SCHEMA, C.decode, C.topic(DEV, "heartbeat"), b"42")


def test_bad_version():
    import json

    topic = C.topic(DEV, "heartbeat")
    rejects(C.R_VERSION, C.decode, topic, json.dumps(_hb(v=2)))
    rejects(C.R_VERSION, C.decode, topic, json.dumps(_hb(v="1")))
    rejects(C.R_VERSION, C.validate, "heartbeat", _hb(v=0))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(v=None))  # missing


def test_identity_mismatch():
    import json

    payload = json.dumps(_hb(id="node-0002"))
    rejects(C.R_IDENTITY, C.decode, C.topic(DEV, "heartbeat"), payload)
    rejects(C.R_IDENTITY, C.validate, "heartbeat", _hb(id="Bad_Id"))


def test_schema_missing_required_fields():
    for kind in C.KINDS:
        for field in BODIES[kind]:
            if C.SCHEMAS[kind][field][1]:
                rejects(C.R_SCHEMA, C.validate, kind, _payload(kind, **{field: None}))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(ts=None))


def test_schema_type_errors():
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(seq="1"))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(seq=1.5))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(uptime_s="5"))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(versions=["1"]))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(kind=1))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(ts="now"))
    rejects(C.R_SCHEMA, C.validate, "cmd_res", _payload("cmd_res", result="ok"))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(v=1.0))


def test_schema_bool_is_not_int_and_int_is_not_bool():
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(seq=True))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(interval_s=True))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(rssi=False))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(v=True))
    rejects(C.R_SCHEMA, C.validate, "cmd_res", _payload("cmd_res", ok=1))
    rejects(C.R_SCHEMA, C.validate, "config_reported", _payload("config_reported", ok=0))


def test_schema_ranges():
    for field, value in (
        ("cpu_pct", 100.5),
        ("cpu_pct", -1),
        ("mem_used_pct", 101),
        ("temp_c", -61),
        ("temp_c", 151),
        ("interval_s", 0),
        ("interval_s", 86401),
        ("uptime_s", -0.1),
        ("seq", -1),
        ("seq", 2**53 + 1),
        ("ts", -1),
        ("ts", 2**33 + 1),
        ("fps", 1001),
    ):
        rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(**{field: value}))
    body = _hb(cpu_pct=100, temp_c=-60, interval_s=1, seq=2**53, fps=0)
    assert C.validate("heartbeat", body) is body


def test_schema_enums():
    rejects(C.R_SCHEMA, C.validate, "status", _payload("status", state="sleeping"))
    rejects(C.R_SCHEMA, C.validate, "status", _payload("status", kind="phone"))
    rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(kind="Node"))
    for state in C.STATUS_STATES:
        for kind in C.DEVICE_KINDS:
            C.validate("status", _payload("status", state=state, kind=kind))


def test_schema_string_length():
    rejects(C.R_SCHEMA, C.validate, "status", _payload("status", reason="x" * 257))
    C.validate("status", _payload("status", reason="x" * 256))
    # "error" carries a message and may be longer
    C.validate("cmd_res", _payload("cmd_res", ok=False, error="x" * 1000))


def test_nan_and_infinity_refused():
    nan = float("nan")
    inf = float("inf")
    for value in (nan, inf, -inf):
        rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(uptime_s=value))
        rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(ts=value))
        rejects(C.R_SCHEMA, C.encode, "heartbeat", DEV, dict(BODIES["heartbeat"], temp_c=value), TS)
    rejects(C.R_SCHEMA, C.encode, "heartbeat", DEV, BODIES["heartbeat"], nan)


def test_validate_unknown_kind():
    rejects(C.R_TOPIC, C.validate, "telemetry", {})


def test_protocol_error_carries_reason_and_detail():
    exc = rejects(C.R_SCHEMA, C.validate, "heartbeat", _hb(seq="1"))
    assert exc.reason in C.REASONS
    assert "seq" in exc.detail
    assert str(exc).startswith(C.R_SCHEMA + ": ")


# ---------------------------------------------------------------- reconnect delay


def test_reconnect_first_retry_spread():
    assert C.reconnect_delay(0, 0.0, 1.0, 300.0, 20.0) == 0.0
    assert C.reconnect_delay(0, 0.5, 1.0, 300.0, 20.0) == 10.0
    assert 19.9 < C.reconnect_delay(0, 0.999, 1.0, 300.0, 20.0) < 20.0
    # the spread is independent of base and cap
    assert C.reconnect_delay(0, 0.5, 100.0, 1.0, 4.0) == 2.0
    assert C.reconnect_delay(-3, 0.5, 1.0, 300.0, 20.0) == 10.0


def test_reconnect_full_jitter_bounds():
    for attempt in range(1, 40):
        ceiling = min(300.0, 1.0 * 2**attempt)
        for i in range(10):
            rnd = i / 10 + 0.0999
            delay = C.reconnect_delay(attempt, rnd, 1.0, 300.0, 20.0)
            assert 0 <= delay < ceiling, (attempt, rnd, delay)
        assert C.reconnect_delay(attempt, 0.0, 1.0, 300.0, 20.0) == 0.0
    assert C.reconnect_delay(1, 0.5, 1.0, 300.0, 20.0) == 1.0
    assert C.reconnect_delay(3, 0.5, 0.5, 300.0, 20.0) == 2.0


def test_reconnect_cap_and_huge_attempts():
    assert C.reconnect_delay(20, 0.5, 1.0, 300.0, 20.0) == 150.0
    assert C.reconnect_delay(10**6, 0.999, 1.0, 300.0, 20.0) < 300.0
    assert C.reconnect_delay(64, 0.5, 1.0, 60.0, 20.0) == 30.0


def test_reconnect_defaults():
    assert C.reconnect_delay(0, 0.5) == 10.0
    assert C.reconnect_delay(100, 0.5) == C.RECONNECT_CAP_S / 2
    assert C.RECONNECT_CAP_S + 20.0 < 60.0  # back within a minute, the first spread included


def test_update_state_enums_and_ranges():
    C.validate("update_state", _payload("update_state"))
    for field, bad in (("state", "pending"), ("artifact", "kernel"), ("progress", 101)):
        try:
            C.validate("update_state", _payload("update_state", **{field: bad}))
        except C.ProtocolError as exc:
            assert exc.reason == C.R_SCHEMA, (field, exc.reason)
        else:
            raise AssertionError("update_state with " + field + "=" + repr(bad) + " accepted")


# ---------------------------------------------------------------- receipts (issue 14)


def test_seq_ranges_merge_and_sort():
    assert R.seq_ranges([]) == []
    assert R.seq_ranges([5, 3, 4, 4, 9, 10, 1]) == [[1, 1], [3, 5], [9, 10]]


def test_receipt_bodies_split_at_max_ranges():
    seqs = list(range(0, 2 * (C.RECEIPT_MAX_RANGES + 3), 2))  # every other: one range each
    bodies = R.receipt_bodies("e1", seqs)
    assert len(bodies) == 2
    assert len(bodies[0]["ranges"]) == C.RECEIPT_MAX_RANGES
    assert sum(len(b["ranges"]) for b in bodies) == len(seqs)
    for body in bodies:
        topic, data, qos, retain = C.encode("receipt", DEV, body, TS)
        assert topic.endswith("/receipt") and qos == 1 and not retain
        assert len(data) <= C.KINDS["receipt"][4]
        assert C.decode(topic, data)[1] == "receipt"


def test_receipt_ranges_accepts_what_was_given_out():
    body = {"epoch": "e1", "ranges": [[0, 3], [7, 7]]}
    assert C.receipt_ranges(body, "e1", 8) == [[0, 3], [7, 7]]
    assert C.receipt_ranges({"ranges": [[0, 0]]}, "", 1) == [[0, 0]]  # a stream without epoch


def test_receipt_ranges_refuses_forged_and_malformed():
    refuse = (
        ({"epoch": "other", "ranges": [[0, 1]]}, "another event stream"),
        ({"epoch": "e1", "ranges": [[0, 8]]}, "never sent"),  # next_seq is 8
        ({"epoch": "e1", "ranges": [[0, 2**53]]}, "never sent"),
        ({"epoch": "e1", "ranges": [[3, 2]]}, "0 <= lo <= hi"),
        ({"epoch": "e1", "ranges": [[-1, 2]]}, "0 <= lo <= hi"),
        ({"epoch": "e1", "ranges": [[1]]}, "[lo, hi]"),
        ({"epoch": "e1", "ranges": [[1, 2, 3]]}, "[lo, hi]"),
        ({"epoch": "e1", "ranges": [[1.0, 2]]}, "0 <= lo <= hi"),
        ({"epoch": "e1", "ranges": [[True, 2]]}, "0 <= lo <= hi"),
        ({"epoch": "e1", "ranges": ["0-3"]}, "[lo, hi]"),
        ({"epoch": "e1", "ranges": [[0, 0]] * (C.RECEIPT_MAX_RANGES + 1)}, "too many"),
    )
    for body, why in refuse:
        exc = rejects(C.R_SCHEMA, C.receipt_ranges, body, "e1", 8)
        assert why in exc.detail, (body, exc.detail)


def test_receipt_schema():
    rejects(C.R_SCHEMA, C.validate, "receipt", _payload("receipt", ranges=None))
    rejects(C.R_SCHEMA, C.validate, "receipt", _payload("receipt", ranges={"0": 1}))
    rejects(C.R_SCHEMA, C.validate, "receipt", _payload("receipt", epoch=5))
    up = [t for t, _q in C.server_subscriptions()]
    assert not [t for t in up if t.endswith("/receipt")]  # the server never reads receipts
    assert ("read", "camfleet/v1/%u/receipt") in C.device_acl_patterns()


# issue 15: shape bounds, the hostile corpus, a fuzz loop (tests/mp/shape_cases.py)
from tests.mp.shape_cases import *  # noqa: E402, F403
