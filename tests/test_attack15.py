"""Issue 15, tried by an outside attacker: payloads the contract accepts that the storage
path read differently (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from firmware import contract
from fleet_server.db import Heartbeat, make_engine, make_sessionmaker
from fleet_server.ingest.deadletter import DeadLetter
from fleet_server.ingest.registry import Accepted, Registry
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
