"""The budget's decisions on numbers (ingest/budget.py) and the refusal log's rate."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import Alert, AlertChange
from fleet_server.ingest.budget import Budget, BudgetSettings, KindBudget
from fleet_server.ingest.flood import SYSTEM, FloodWatch
from fleet_server.ingest.gate import RefusalLog, Refused
from fleet_server.ingest.quarantine import Quarantine
from fleet_server.migrate import upgrade


def _budget(**kw: object) -> Budget:
    settings = BudgetSettings(
        kinds={"heartbeat": KindBudget(rate_per_s=2, burst=5)},
        flood_after_s=10, flood_gap_s=2, flood_clear_s=30, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return Budget(settings)


def test_bucket_takes_the_burst_then_the_rate() -> None:
    b = _budget()
    assert [b.take("d-1", "heartbeat", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert b.take("d-1", "heartbeat", 0.5)  # 0.5 s at 2/s: one token
    assert not b.take("d-1", "heartbeat", 0.5)
    assert b.take("d-2", "heartbeat", 0.5)  # another device has its own bucket
    assert b.take("d-1", "event", 0.5)  # a kind with no budget is never limited
    assert all(_budget(enabled=False).take("d", "heartbeat", 0.0) for _ in range(100))


def test_a_sustained_flood_begins_and_ends_a_burst_does_not() -> None:
    b = _budget()
    t = 0.0
    for _ in range(5):
        b.take("burst-1", "heartbeat", t)
    b.take("burst-1", "heartbeat", t)  # one drop, then quiet: a burst
    while t < 12.0:  # flood-1 drops for 12 s without a 2 s pause
        b.take("flood-1", "heartbeat", t)
        t += 0.1
    assert b.floods(t) == (["flood-1"], [])
    assert list(b.flooding()) == ["flood-1"]
    assert b.floods(t + 5) == ([], [])  # still within flood_clear_s
    assert b.floods(t + 31) == ([], ["flood-1"])
    assert b.flooding() == {}


def test_refusal_log_writes_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RefusalLog(interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fleet_server.ingest.gate"):
        for i in range(10_000):
            now[0] = i * 0.003  # 30 s of refusals at 333/s
            rl.note(Refused("bad_json", "dev-1", f"#{i}"), 10)
        rl.note(Refused("bad_shape", "dev-1", "x"), 10)
        now[0] = 100.0
        rl.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert 3 <= len(lines) <= 6, lines  # first + one per 10 s + the other reason
    assert lines[0].startswith("refused bad_json from dev-1")
    summed = sum(int(ln.split()[1]) for ln in lines if ln.startswith("refused ") and "more" in ln)
    assert summed == 9_999  # every refusal after the first is in a summary


def test_flood_watch_opens_and_resolves_the_alert_and_auto_quarantines(
    tmp_path: Path,
) -> None:
    """FloodWatch on a real SQLite fleet DB: a flood opens one 'flooding' alert, with
    auto_quarantine the device is quarantined (recorded, refused from then on), and the
    alert resolves once the flood is over."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    budget = _budget(auto_quarantine=True)
    quarantine = Quarantine(sessions)
    sent: list[AlertChange] = []
    watch = FloodWatch(budget, sessions, quarantine, sent.extend)
    now = time.monotonic()
    t = now - 12.0
    while t < now:  # 12 s over budget, no pause
        budget.take("auto-flood-1", "heartbeat", t)
        t += 0.05
    changes = watch.tick()
    assert [(c.device_id, c.rule, c.state) for c in changes] == [
        ("auto-flood-1", "flooding", "open")
    ]
    assert sent == changes
    assert quarantine.has("auto-flood-1")
    assert [r.device_id for r in quarantine.listing()] == ["auto-flood-1"]
    assert quarantine.listing()[0].automatic
    assert watch.tick() == []  # still flooding: nothing new
    budget._floods["auto-flood-1"].last -= 60
    ended = watch.tick()
    assert [(c.device_id, c.state) for c in ended] == [("auto-flood-1", "resolved")]
    with sessions() as db:
        alerts = db.scalars(select(Alert).where(Alert.device_id == "auto-flood-1")).all()
    assert [(a.rule, a.state) for a in alerts] == [("flooding", "resolved")]
    assert quarantine.release("auto-flood-1", SYSTEM)
    assert not quarantine.has("auto-flood-1")
    quarantine.refresh(force=True)
    assert not quarantine.has("auto-flood-1")
