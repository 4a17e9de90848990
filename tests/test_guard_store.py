"""Storing under issue 15 on SQLite and PostgreSQL: a message that fails after the contract
is isolated and set aside (the rest of its batch stored), the database being away is not
a message's fault, and the events' unique key is (device, event id) after the migration."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import sqlalchemy as sa
from alembic import command

from firmware import contract
from fleet_server.db import Heartbeat, make_engine, make_sessionmaker
from fleet_server.ingest.deadletter import DeadLetter
from fleet_server.ingest.events import Event
from fleet_server.ingest.registry import Accepted, ApplyStats, Registry
from fleet_server.ingest.safestore import SafeStore
from fleet_server.metrics import Metrics
from fleet_server.migrate import alembic_config, upgrade


class PoisonRegistry(Registry):
    """The real registry, except that a batch holding a heartbeat whose ``camera`` is
    "poison" fails the way a rule tripping on one payload would (the seam is the ingest's
    registry; storing is real)."""

    def apply(self, batch: Sequence[Accepted]) -> ApplyStats:
        for msg in batch:
            if msg.body.get("camera") == "poison":
                raise KeyError("a rule tripped on this payload")
        return super().apply(batch)


def _hb(device: str, seq: int, **extra: object) -> Accepted:
    body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": 1.0, **extra}
    _t, payload, _q, _r = contract.encode("heartbeat", device, body, 1.8e9 + seq)
    _d, _k, decoded = contract.decode(contract.topic(device, "heartbeat"), payload)
    return Accepted(device, "heartbeat", decoded, time.time(), payload)


def test_one_bad_message_is_set_aside_and_its_batch_stored(database_url: str) -> None:
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    metrics = Metrics()
    safe = SafeStore(PoisonRegistry(sessions), metrics, threading.Event())
    batch = [_hb(f"iso-{n % 7}", n) for n in range(200)]
    batch[57] = _hb("iso-evil", 1, camera="poison")
    batch[143] = _hb("iso-evil", 2, camera="poison")
    done = safe.apply(batch)
    assert done is not None
    stats, aside = done
    assert sorted(aside) == [57, 143]
    assert stats.heartbeats == 198
    with sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Heartbeat)) == 198
        dead = db.scalars(sa.select(DeadLetter).order_by(DeadLetter.id)).all()
    assert [d.device_id for d in dead] == ["iso-evil", "iso-evil"]
    assert "KeyError" in dead[0].error and '"camera": "poison"' in dead[0].payload
    assert metrics.dead_letters._value.get() == 2
    # the same batch again (a redelivery): nothing stored twice, the poison set aside again
    done = safe.apply(batch)
    assert done is not None and sorted(done[1]) == [57, 143]
    with sessions() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(Heartbeat)) == 198


def test_database_away_is_retried_not_dead_lettered(tmp_path: pytest.TempPathFactory) -> None:
    """A database that does not answer keeps the batch (and stops with None): the messages
    are not at fault and none is set aside."""
    url = f"sqlite:///{tmp_path}/gone/fleet.db"  # type: ignore[operator]
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE heartbeats"))  # every apply fails...
    stop = threading.Event()
    safe = SafeStore(Registry(sessions), Metrics(), stop)
    safe.database_answers = lambda: False  # type: ignore[method-assign]  # ...and no answer
    threading.Timer(1.0, stop.set).start()
    assert safe.apply([_hb("away-1", 1)]) is None
    assert safe.dead_letters == 0


def test_migration_keeps_events_and_makes_them_unique_per_device(database_url: str) -> None:
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "0002_events")
    engine = make_engine(database_url)
    row = {"seq": 1, "type": "t", "ts": 1.0, "received_at": 1.0, "data": "{}"}
    insert = sa.text(
        "INSERT INTO events (event_id, device_id, seq, type, ts, received_at, data) "
        "VALUES (:event_id, :device_id, :seq, :type, :ts, :received_at, :data)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {**row, "event_id": "old-1", "device_id": "mig-a"})
        conn.execute(insert, {**row, "event_id": "old-2", "device_id": "mig-b"})
    engine.dispose()
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        kept = conn.execute(sa.text("SELECT event_id FROM events ORDER BY id")).scalars().all()
        assert kept == ["old-1", "old-2"]
        conn.execute(insert, {**row, "event_id": "old-1", "device_id": "mig-b"})  # now allowed
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(insert, {**row, "event_id": "old-1", "device_id": "mig-a"})
    with make_sessionmaker(engine)() as db:
        owners = db.scalars(sa.select(Event.device_id).where(Event.event_id == "old-1")).all()
    assert sorted(owners) == ["mig-a", "mig-b"]
