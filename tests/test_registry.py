"""Registry and health decisions on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from firmware import contract
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health import engine as health
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    engine = make_engine(database_url)
    return Registry(make_sessionmaker(engine))


def _msg(msg_kind: str, device: str, at: float, **body: Any) -> Accepted:
    ts = body.pop("ts", at)
    topic, payload, _q, _r = contract.encode(msg_kind, device, body, ts)
    _dev, _kind, decoded = contract.decode(topic, payload)
    return Accepted(device, msg_kind, decoded, at)


def _hb(device: str, seq: int, at: float, interval: float = 5.0) -> Accepted:
    return _msg("heartbeat", device, at, seq=seq, kind="agent", interval_s=interval, uptime_s=at)


def test_heartbeat_creates_device_online(registry: Registry) -> None:
    stats = registry.apply([_hb("cam-a", 0, 100.0)])
    assert stats.heartbeats == 1
    assert stats.went_online == ["cam-a"]
    dev = registry.get_device("cam-a")
    assert dev is not None
    assert (dev.state, dev.kind, dev.last_seq, dev.heartbeat_interval_s) == (
        "online",
        "agent",
        0,
        5,
    )
    assert registry.heartbeat_count() == 1


def test_will_after_online_of_same_connection_marks_offline(registry: Registry) -> None:
    # the will and the online status of one connection carry the same ts
    registry.apply([_msg("status", "cam-b", 10.0, state="online", kind="agent", ts=7)])
    registry.apply([_hb("cam-b", 0, 11.0)])
    stats = registry.apply([_msg("status", "cam-b", 12.0, state="offline", kind="agent", ts=7)])
    dev = registry.get_device("cam-b")
    assert dev is not None
    assert dev.state == "offline"
    assert dev.state_reason == health.REASON_WILL
    assert stats.went_offline == ["cam-b"]


def test_stale_status_is_ignored(registry: Registry) -> None:
    registry.apply(
        [_msg("status", "cam-c", 10.0, state="offline", kind="agent", ts=50, reason="shutdown")]
    )
    registry.apply([_msg("status", "cam-c", 11.0, state="online", kind="agent", ts=40)])
    dev = registry.get_device("cam-c")
    assert dev is not None
    assert (dev.state, dev.state_reason) == ("offline", "shutdown")


def test_duplicate_heartbeat_is_stored_once_and_gaps_counted(registry: Registry) -> None:
    first = _hb("cam-d", 3, 100.0)
    stats = registry.apply([first, first, _hb("cam-d", 7, 120.0)])
    assert stats.duplicates == 1
    assert registry.heartbeat_count() == 2
    dev = registry.get_device("cam-d")
    assert dev is not None
    assert dev.seq_gaps == 3  # 4, 5, 6 never came
    registry.apply([_hb("cam-d", 0, 130.0)])  # restart: counts again from zero, no gap
    dev = registry.get_device("cam-d")
    assert dev is not None
    assert (dev.last_seq, dev.seq_gaps) == (0, 3)


def test_deadline_marks_offline_only_after_grace(registry: Registry) -> None:
    registry.apply([_hb("cam-e", 0, 1000.0, interval=2.0)])
    assert registry.mark_overdue(1005.9, grace=3.0)[0] == []
    assert registry.mark_overdue(1006.1, grace=3.0)[0] == ["cam-e"]
    dev = registry.get_device("cam-e")
    assert dev is not None
    assert (dev.state, dev.state_reason) == ("offline", health.REASON_DEADLINE)
    assert registry.mark_overdue(2000.0, grace=3.0)[0] == []  # already offline
    registry.apply([_hb("cam-e", 1, 2001.0, interval=2.0)])
    dev = registry.get_device("cam-e")
    assert dev is not None
    assert dev.state == "online"


def test_list_filters_and_pages(registry: Registry) -> None:
    registry.apply([_hb(f"cam-{i:03d}", 0, 100.0) for i in range(5)])
    registry.apply([_msg("status", "cam-001", 101.0, state="offline", kind="agent", ts=101)])
    rows, total = registry.list_devices(limit=2, offset=1)
    assert total == 5
    assert [d.id for d in rows] == ["cam-001", "cam-002"]
    rows, total = registry.list_devices(state="offline")
    assert (total, [d.id for d in rows]) == (1, ["cam-001"])
    assert registry.state_counts() == {"online": 4, "offline": 1}


def test_seq_step_rules() -> None:
    assert health.seq_step(None, 5) == health.SeqStep(False, False, False, 0)
    assert health.seq_step(5, 5).duplicate
    assert health.seq_step(5, 2, last_ts=50.0, ts=60.0).restarted  # a new run
    late = health.seq_step(5, 2, last_ts=50.0, ts=20.0)  # same run, overtaken
    assert (late.late, late.restarted, late.gap) == (True, False, -1)
    assert health.seq_step(5, 9).gap == 3


def test_late_heartbeat_fills_its_gap_and_keeps_the_latest_view(registry: Registry) -> None:
    registry.apply([_hb("cam-f", 0, 100.0), _hb("cam-f", 3, 130.0)])
    dev = registry.get_device("cam-f")
    assert dev is not None
    assert (dev.last_seq, dev.seq_gaps) == (3, 2)
    registry.apply([_hb("cam-f", 1, 110.0)])  # another worker stored it late
    dev = registry.get_device("cam-f")
    assert dev is not None
    assert (dev.last_seq, dev.seq_gaps) == (3, 1)
    assert dev.last_heartbeat is not None and dev.last_heartbeat["seq"] == 3
    assert registry.heartbeat_count() == 3


def test_old_heartbeats_roll_up_hourly_and_raw_ones_stay(registry: Registry) -> None:
    from fleet_server.health import retention

    now = 10 * 86400.0
    old = [
        _msg("heartbeat", "cam-r", 0, seq=i, kind="agent", interval_s=600, uptime_s=i * 600.0,
             cpu_pct=float(10 + i), ts=now - 2 * 86400 + i * 600)
        for i in range(12)  # two hours, two days ago
    ]  # fmt: skip
    fresh = _msg("heartbeat", "cam-r", 0, seq=99, kind="agent", interval_s=600,
                 uptime_s=1e5, cpu_pct=50.0, ts=now - 60)  # fmt: skip
    registry.apply([*old, fresh])
    with registry.sessions.begin() as db:
        assert retention.compact(db, now, batch=5) == 5  # one batch at a time
    with registry.sessions.begin() as db:
        assert retention.compact(db, now) == 7
    with registry.sessions.begin() as db:
        assert retention.compact(db, now) == 0
        rows = db.query(retention.HealthRollup).order_by(retention.HealthRollup.bucket).all()
        summary = [(r.count, r.stats["cpu_pct"]) for r in rows]
    assert registry.heartbeat_count() == 1  # the fresh one stays raw
    # 6 heartbeats an hour; the first bucket came in two batches and was merged
    assert summary == [(6, [6, 10.0, 12.5, 15.0]), (6, [6, 16.0, 18.5, 21.0])]


def test_rollup_merge_is_the_rollup_of_everything() -> None:
    from fleet_server.health import retention

    rows = [("d-1", 3600.0 + i, {"temp_c": float(t)}) for i, t in enumerate([3, 9, 4, 7, 1])]
    whole = retention.rollup(rows)[("d-1", 3600.0)]
    parts = retention.merge(retention.rollup(rows[:2])[("d-1", 3600.0)],
                            retention.rollup(rows[2:])[("d-1", 3600.0)])  # fmt: skip
    assert whole == (5, {"temp_c": [5.0, 1.0, 4.8, 9.0]})
    assert parts[0] == whole[0]
    assert parts[1]["temp_c"] == pytest.approx(whole[1]["temp_c"])


def test_two_writers_on_the_same_devices_store_everything_once(database_url: str) -> None:
    """Two ingest workers hold heartbeats of the same devices at once (a shared subscription
    spreads messages, not devices), some of them redelivered to both, while the deadline
    monitor sweeps: no deadlock, no error, every heartbeat stored once and each device's
    latest view is its newest heartbeat. On PostgreSQL this is the row-lock order of
    ``Registry.apply`` (heartbeats stored before the device rows are locked)."""
    import threading

    from fleet_server.health.alerts import AlertBook
    from fleet_server.health.rules import RuleThresholds

    upgrade(database_url)
    registry = Registry(make_sessionmaker(make_engine(database_url)), AlertBook(RuleThresholds()))
    devices = [f"cam-w{i}" for i in range(6)]
    per_device = 60
    msgs = [
        _msg("heartbeat", dev, 1000.0 + seq, seq=seq, kind="agent", interval_s=5.0,
             uptime_s=float(seq), temp_c=95.0 if seq % 7 < 3 else 40.0)
        for seq in range(per_device) for dev in devices
    ]  # fmt: skip
    # each worker gets every other batch, and both get every fifth batch (a redelivery)
    batches = [msgs[i : i + 20] for i in range(0, len(msgs), 20)]
    shares = [[b for n, b in enumerate(batches) if n % 2 == w or n % 5 == 0] for w in (0, 1)]
    errors: list[BaseException] = []
    done = threading.Event()

    def work(share: list[list[Accepted]]) -> None:
        try:
            for batch in share:
                registry.apply(batch)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def sweep() -> None:
        try:
            while not done.is_set():
                registry.mark_overdue(1000.0, 10.0)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=work, args=(share,)) for share in shares]
    sweeper = threading.Thread(target=sweep)
    for t in [*writers, sweeper]:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    sweeper.join(30)
    assert not errors, errors
    assert registry.heartbeat_count() == len(msgs)
    for dev_id in devices:
        dev = registry.get_device(dev_id)
        assert dev is not None and dev.last_seq == per_device - 1
        assert dev.last_heartbeat is not None and dev.last_heartbeat["seq"] == per_device - 1
