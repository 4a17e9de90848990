"""Receipts on the server (issue 14): stream accounting as pure decisions, then on a real
database (SQLite and PostgreSQL) through the registry, the loss monitor and the API."""

from __future__ import annotations

from typing import Any

import pytest

from firmware import contract
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import Alert
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.metrics import Metrics
from fleet_server.migrate import upgrade
from fleet_server.receipts import actions, store
from fleet_server.receipts import track as tr
from fleet_server.receipts.runner import LossMonitor
from fleet_server.receipts.settings import ReceiptSettings

# ---------------------------------------------------------------- pure decisions


def test_in_order_stream_has_no_holes() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [0, 1, 2], 10.0)
    tr.receive(s, [3, 4], 11.0)
    assert (s.top, s.contiguous, s.holes, s.open_count()) == (4, 4, [], 0)


def test_holes_open_split_and_close() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [0, 5, 9], 10.0)
    assert s.holes == [[1, 4, 10.0], [6, 8, 10.0]]
    assert s.contiguous == 0 and s.open_count() == 7
    tr.receive(s, [2, 3, 7], 20.0)  # inside the holes: they split, keeping their age
    assert s.holes == [[1, 1, 10.0], [4, 4, 10.0], [6, 6, 10.0], [8, 8, 10.0]]
    tr.receive(s, [1, 4, 6, 8, 8, 0, 5], 30.0)  # repeats change nothing
    assert (s.holes, s.contiguous, s.top) == ([], 9, 9)


def test_stream_starts_at_zero() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [3], 1.0)
    assert s.holes == [[0, 2, 1.0]]


def test_age_counts_lost_then_late_arrival_is_taken_off() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [0, 4], 100.0)
    assert tr.age(s, 150.0, 60.0).new_lost == 0
    out = tr.age(s, 160.0, 60.0)
    assert (out.new_lost, out.lost_ranges, s.lost, s.holes) == (3, [[1, 3]], 3, [])
    tr.receive(s, [2], 170.0)  # arrived after all
    assert (s.lost, s.late, s.lost_ranges) == (2, 1, [[1, 1], [3, 3]])
    assert tr.age(s, 10_000.0, 60.0).new_lost == 0  # counted once


def test_clock_jump_back_does_not_count_early_and_forward_is_repaired() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [0, 2], 1000.0)
    assert tr.age(s, 10.0, 60.0).new_lost == 0  # the clock went back: not lost yet
    assert tr.age(s, 10**9, 60.0).new_lost == 1  # jumped forward: counted…
    tr.receive(s, [1], 1001.0)  # …and taken off when the event comes after all
    assert (s.lost, s.late) == (0, 1)


def test_new_epoch_counts_old_holes_and_ignores_old_epoch_events() -> None:
    s = tr.Stream()
    out = tr.Outcome()
    assert tr.switch_epoch(s, "a", out)
    tr.receive(s, [0, 3], 1.0)
    assert tr.switch_epoch(s, "b", out)
    assert (out.new_lost, s.lost, s.top, s.epoch) == (2, 2, -1, "b")
    assert not tr.switch_epoch(s, "a", out)  # a late event of the old stream
    assert s.epoch == "b"


def test_holes_are_bounded() -> None:
    s = tr.Stream(epoch="e")
    out = tr.receive(s, list(range(0, 4 * tr.MAX_HOLES, 2)), 1.0)  # every other number
    assert len(s.holes) == tr.MAX_HOLES
    assert out.new_lost == 2 * tr.MAX_HOLES - 1 - tr.MAX_HOLES
    assert len(s.lost_ranges) <= tr.MAX_LOST_RANGES


def test_huge_seq_is_one_hole_not_a_huge_list() -> None:
    s = tr.Stream(epoch="e")
    tr.receive(s, [0, 2**53], 1.0)
    assert s.holes == [[1, 2**53 - 1, 1.0]] and s.open_count() == 2**53 - 1


# ---------------------------------------------------------------- on a database


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)))


def _event(device: str, seq: int, at: float, epoch: str | None = "ep1") -> Accepted:
    body: dict[str, Any] = {"seq": seq, "event_id": f"{device}-{epoch}-{seq}", "type": "t"}
    if epoch is not None:
        body["epoch"] = epoch
    topic, payload, _q, _r = contract.encode("event", device, body, at)
    _d, _k, decoded = contract.decode(topic, payload)
    return Accepted(device, "event", decoded, at)


def _beat(device: str, at: float, **fields: Any) -> Accepted:
    body = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0, **fields}
    topic, payload, _q, _r = contract.encode("heartbeat", device, body, at)
    return Accepted(device, "heartbeat", contract.decode(topic, payload)[2], at)


def test_registry_tracks_streams_and_monitor_counts_losses(registry: Registry) -> None:
    registry.apply([_event("cam-a", s, 100.0) for s in (0, 1, 2, 5)] + [_event("cam-b", 0, 100.0)])
    registry.apply([_event("cam-a", 3, 101.0), _event("cam-a", 3, 101.0)])  # a repeat
    registry.apply([_event("cam-c", 7, 101.0, epoch=None)])  # does not speak receipts
    with registry.sessions() as db:
        a = store.get(db, "cam-a")
        assert store.get(db, "cam-c") is None
    assert a is not None
    assert (a["top"], a["contiguous"], a["holes"], a["lost"]) == (5, 3, [[4, 4, 100.0]], 0)
    metrics = Metrics()
    mon = LossMonitor(registry.sessions, metrics, None, ReceiptSettings(lost_after_s=60))
    assert mon.check(now=150.0).lost == 0
    t = mon.check(now=161.0)
    assert (t.lost, t.open) == (1, 0)
    assert mon.check(now=500.0).lost == 1  # counted once
    assert metrics.events_lost._value.get() == 1
    with registry.sessions() as db:
        alerts = db.query(Alert).filter_by(device_id="cam-a", rule=store.LOST_RULE).all()
    assert [(x.state, x.value) for x in alerts] == [("open", "1")]
    assert "seq 4" in alerts[0].message
    registry.apply([_event("cam-a", 4, 502.0)])  # late after all
    t = mon.check(now=503.0)
    assert (t.lost, t.late) == (0, 1)


def test_heartbeat_counters_are_kept(registry: Registry) -> None:
    registry.apply([_beat("cam-h", 10.0, outbox_refused=3, outbox_dropped=2, outbox_unreceipted=7)])
    with registry.sessions() as db:
        got = store.get(db, "cam-h")
        t = store.totals(db)
    assert got is not None
    assert (got["refused"], got["dropped"], got["unreceipted"]) == (3, 2, 7)
    assert (t.refused, t.dropped, t.unreceipted) == (3, 2, 7)


def test_receipt_messages_one_per_device_and_ranges() -> None:
    batch = [_event("cam-a", s, 1.0) for s in (4, 5, 6, 9)] + [
        _event("cam-b", 0, 1.0),
        _event("cam-c", 1, 1.0, epoch=None),
        _beat("cam-a", 1.0),
    ]
    msgs = actions.messages(batch, 2.0)
    assert len(msgs) == 2
    got = {}
    for topic, payload in msgs:
        device, kind, body = contract.decode(topic, payload)
        assert kind == "receipt"
        got[device] = (body["epoch"], body["ranges"])
    assert got == {"cam-a": ("ep1", [[4, 6], [9, 9]]), "cam-b": ("ep1", [[0, 0]])}


def test_a_node_drop_report_fills_its_holes_as_dropped_not_lost(registry: Registry) -> None:
    ev = [_event("node-d", s, 10.0) for s in (0, 1)]
    topic, payload, _q, _r = contract.encode("event", "node-d", {
        "seq": 5, "event_id": "node-d-ep1-5-dropped", "type": "buffer.dropped", "epoch": "ep1",
        "data": {"dropped": 4, "first_seq": 2, "last_seq": 5, "total": 4}}, 11.0)  # fmt: skip
    report = Accepted("node-d", "event", contract.decode(topic, payload)[2], 11.0)
    forged = _event("node-d", 7, 11.0)
    forged.body.update(type="buffer.dropped", data={"first_seq": 0, "last_seq": 2**40})
    registry.apply([*ev, report, _event("node-d", 6, 12.0), forged])
    with registry.sessions() as db:
        got = store.get(db, "node-d")
    assert got is not None and (got["contiguous"], got["holes"]) == (7, [])
