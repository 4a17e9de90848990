"""Issue 15, tried by an outside attacker: payloads the contract accepts that the storage
path read differently (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from firmware import contract
from fleet_server.db import Device, Heartbeat, make_engine, make_sessionmaker
from fleet_server.ingest.deadletter import DeadLetter
from fleet_server.ingest.registry import Accepted, ApplyStats, Registry
from fleet_server.ingest.safestore import SafeStore
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade


def _raw_hb(device: str, seq: int, ts: str) -> Accepted:
    fields = f'"v":1,"id":"{device}","ts":{ts},"seq":{seq},"kind":"agent"'
    raw = ("{" + fields + ',"interval_s":30,"uptime_s":1}').encode()
    _d, _k, body = contract.decode(contract.topic(device, "heartbeat"), raw)
    return Accepted(device, "heartbeat", body, time.time(), raw)


def test_a_timestamp_that_underflows_is_stored_not_dead_lettered(database_url: str) -> None:
    """``"ts": 1e-400`` is 0.0 to the contract (in range), but PostgreSQL's float8 refuses
    the text: read from the raw payload it made every such heartbeat a dead letter (and its
    batch stored again in halves, for all devices' messages in it)."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    batch = [_raw_hb("uf-honest", n, str(1.8e9 + n)) for n in range(10)]
    batch[4] = _raw_hb("uf-odd", 1, "1e-400")
    batch[7] = _raw_hb("uf-odd", 2, "0." + "0" * 400 + "1")
    done = safe.apply(batch)
    assert done is not None
    stats, aside = done
    assert aside == []
    assert stats.heartbeats == 10
    with sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(DeadLetter)) == 0
        got = db.execute(
            sa.select(Heartbeat.seq, Heartbeat.ts).where(Heartbeat.device_id == "uf-odd")
        ).all()
    assert sorted((int(s), float(t)) for s, t in got) == [(1, 0.0), (2, 0.0)]


def test_a_new_device_s_kind_is_a_device_kind_whatever_it_sends(database_url: str) -> None:
    """A new device's row takes ``kind`` from its first message, where only status and
    heartbeat check it: an event's unchecked ``kind`` of 17 characters broke the insert
    on PostgreSQL (VARCHAR(16)), so every message of that device was a dead letter (its
    batch stored again in halves each time, a log line and a 64 KB row each)."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    body = {"seq": 1, "event_id": "e-1", "type": "motion", "kind": "<b>x</b>" * 3}
    _t, raw, _q, _r = contract.encode("event", "kind-odd", body, 1.8e9)
    _d, _k, decoded = contract.decode(contract.topic("kind-odd", "event"), raw)
    batch = [_raw_hb("kind-honest", n, str(1.8e9 + n)) for n in range(4)]
    batch.insert(2, Accepted("kind-odd", "event", decoded, time.time(), raw))
    done = safe.apply(batch)
    assert done is not None
    assert done[1] == []
    with sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(DeadLetter)) == 0
        kind = db.scalar(sa.select(Device.kind).where(Device.id == "kind-odd"))
    assert kind in contract.DEVICE_KINDS


def _long_messages(device: str) -> list[Accepted]:
    s = "x" * 256
    bodies = {
        "heartbeat": {"seq": 1, "kind": "agent", "interval_s": 30, "uptime_s": 1,
                      "camera": s, "reset_cause": s, "light": s, "versions": {s: s},
                      "hardware": {s: s}, "scene": [s], "unreliable": [s]},
        "status": {"state": "online", "kind": "agent", "reason": s},
        "event": {"seq": 1, "event_id": s, "type": s, "epoch": s, "data": {s: s}},
        "cmd_res": {"cid": s, "ok": False, "error": "e" * 8000, "result": {s: s}},
        "config_reported": {"version": 1, "ok": False, "error": "e" * 3000},
        "update_state": {"campaign": s, "artifact": "agent", "release": s, "state": "failed",
                         "running": s, "error": "e" * 3000},
    }  # fmt: skip
    out = []
    for kind, body in bodies.items():
        _t, raw, _q, _r = contract.encode(kind, device, body, 1.8e9)
        _d, _k, decoded = contract.decode(contract.topic(device, kind), raw)
        out.append(Accepted(device, kind, decoded, time.time(), raw))
    return out


def test_every_string_the_contract_allows_is_stored(database_url: str) -> None:
    """Every up-kind with each string at the contract's longest: stored (or ignored), never
    a dead letter because a column is shorter than the contract allows."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    first = _raw_hb("long-str", 0, "1.7e9")
    done = safe.apply([first, *_long_messages("long-str")])
    assert done is not None
    with sessions() as db:
        errors = db.scalars(sa.select(DeadLetter.error)).all()
    assert [e[:160] for e in errors] == []
    assert done[1] == []


def test_every_integer_the_contract_allows_is_stored(database_url: str) -> None:
    """Heartbeat integers without a range may be anything in 64 bits: stored, never a dead
    letter because a column is a 32-bit integer."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    big = contract.MAX_INT
    batch = []
    for seq, n in enumerate((big, -big, 2**31, -(2**31) - 1)):
        body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": 1, "mem_free": n,
                "rssi": n, "frames": n, "outbox": n, "outbox_dropped": n, "invokes": n,
                "outbox_unreceipted": abs(n) % 2**53, "outbox_refused": abs(n) % 2**53}  # fmt: skip
        _t, raw, _q, _r = contract.encode("heartbeat", "int-edge", body, 1.8e9 + seq)
        _d, _k, decoded = contract.decode(contract.topic("int-edge", "heartbeat"), raw)
        batch.append(Accepted("int-edge", "heartbeat", decoded, time.time(), raw))
    done = safe.apply(batch)
    assert done is not None
    with sessions() as db:
        errors = db.scalars(sa.select(DeadLetter.error)).all()
    assert [e[:160] for e in errors] == []


class _FailsOn(Registry):
    """The real registry, except that a heartbeat whose ``camera`` is "fail" fails (the
    seam: a rule or a column tripping on one payload, as the holes fixed above did)."""

    def apply(self, batch: Sequence[Accepted]) -> ApplyStats:
        if any(m.body.get("camera") == "fail" for m in batch):
            raise KeyError("a rule tripped on this payload")
        return super().apply(batch)


def test_dead_letters_are_logged_at_a_bounded_rate(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One device whose every message fails to store: each is set aside and counted, but
    the log gets one line at once and then summaries, not a line per message."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    metrics = Metrics()
    safe = SafeStore(_FailsOn(sessions), metrics, threading.Event())
    caplog.set_level(logging.WARNING, logger="fleet_server.ingest")
    for n in range(40):
        body = {"seq": n, "kind": "agent", "interval_s": 30, "uptime_s": 1, "camera": "fail"}
        _t, raw, _q, _r = contract.encode("heartbeat", "dl-flood", body, 1.8e9 + n)
        _d, _k, decoded = contract.decode(contract.topic("dl-flood", "heartbeat"), raw)
        done = safe.apply([Accepted("dl-flood", "heartbeat", decoded, time.time(), raw)])
        assert done is not None and done[1] == [0]
    assert metrics.dead_letters._value.get() == 40
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("dl-flood" in line for line in lines)
    assert len(lines) <= 4, lines[:6]


def test_refused_images_are_logged_at_a_bounded_rate(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A device whose every command answer carries an image that is not a JPEG: each is
    refused and counted, and the log gets a line at once and then summaries, not one per
    message (cmd_res's budget is 20/s, burst 500)."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    caplog.set_level(logging.WARNING)
    # the limiter is the process's: a device of its own per database
    dev = "img-pg" if database_url.startswith("postgresql") else "img-lite"
    for n in range(40):
        body = {"cid": f"c-{n}", "ok": True, "result": {"jpeg_b64": "PGI+"}}
        _t, raw, _q, _r = contract.encode("cmd_res", dev, body, 1.8e9 + n)
        _d, _k, decoded = contract.decode(contract.topic(dev, "cmd_res"), raw)
        done = safe.apply([Accepted(dev, "cmd_res", decoded, time.time(), raw)])
        assert done is not None and done[1] == []
    lines = [r.getMessage() for r in caplog.records if dev in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines[:4]


def test_ignored_update_states_are_logged_at_a_bounded_rate_and_quoted(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """update_state for a campaign the device is not in: ignored, and logged once then in
    summaries (it was a line per message), with the device's campaign id quoted: a newline
    in it no longer starts a forged log line."""
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    safe = SafeStore(Registry(sessions), Metrics(), threading.Event())
    caplog.set_level(logging.DEBUG)
    dev = "us-pg" if database_url.startswith("postgresql") else "us-lite"
    for n in range(40):
        body = {"campaign": f"c{n}\nERROR forged line", "artifact": "agent", "release": "1",
                "state": "failed"}  # fmt: skip
        _t, raw, _q, _r = contract.encode("update_state", dev, body, 1.8e9 + n)
        _d, _k, decoded = contract.decode(contract.topic(dev, "update_state"), raw)
        done = safe.apply([Accepted(dev, "update_state", decoded, time.time(), raw)])
        assert done is not None and done[1] == [] and done[0].ignored == 1
    lines = [r.getMessage() for r in caplog.records if dev in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines[:4]
    assert not any("\n" in line for line in lines), lines[:2]
