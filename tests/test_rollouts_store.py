"""Rollouts on a real database (SQLite and PostgreSQL): target filters, the plan, one active
campaign per device, update_state through the registry (forward only, stale ignored and
counted), the tick's retained messages, cancel and the rollback campaign, and the release
check against a real TUF repository."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from firmware import contract
from fleet_server.commands.store import Outgoing
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.health.alerts import AlertBook
from fleet_server.health.rules import RuleThresholds
from fleet_server.identity.model import Commissioning, Site
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.inventory import store as inventory
from fleet_server.migrate import upgrade
from fleet_server.rollouts import actions, plan, runner, store
from fleet_server.rollouts import model as m
from fleet_server.rollouts.model import Campaign, CampaignDevice

FLEET = [f"cam-{i:02d}" for i in range(20)]


@pytest.fixture
def registry(database_url: str) -> Registry:
    upgrade(database_url)
    return Registry(make_sessionmaker(make_engine(database_url)), AlertBook(RuleThresholds()))


def _msg(kind: str, device: str, body: dict[str, Any], at: float) -> Accepted:
    topic, payload, _q, _r = contract.encode(kind, device, body, at)
    return Accepted(*contract.decode(topic, payload), at)


def _beat(device: str, at: float, agent: str = "0.1.0", model: str = "pi4") -> Accepted:
    body = {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0,
            "versions": {"agent": agent}, "hardware": {"model": f"Raspberry {model}"}}  # fmt: skip
    return _msg("heartbeat", device, body, at)


def _state(device: str, cid: str, state: str, release: str = "0.2.0", **kw: object) -> Accepted:
    body = {"campaign": cid, "artifact": "agent", "release": release, "state": state, **kw}
    return _msg("update_state", device, body, time.time())


def _fleet(registry: Registry) -> float:
    now = time.time()
    registry.apply(
        [_beat(d, now, "0.1.0" if i < 16 else "0.0.9", "pi4" if i % 2 else "pi5")
         for i, d in enumerate(FLEET)]
    )  # fmt: skip
    with registry.sessions.begin() as db:
        db.add_all(
            [
                Site(site_id="gate-n", name="North", lat=45.0, lon=7.6, updated_at=now),
                Site(site_id="gate-s", name="South", lat=45.1, lon=7.7, updated_at=now),
            ]
        )
        db.flush()
        for i, dev in enumerate(FLEET):
            db.add(Commissioning(record_id=f"r-{dev}", device_id=dev,
                                 site_id="gate-n" if i < 10 else "gate-s", record={},
                                 signature="s", certificate_serial="1", reference_frame=None,
                                 submitted_by="tech", received_at=now))  # fmt: skip
        for dev in FLEET[:6]:
            inventory.add_tags(db, dev, ["phase:1", "north"])
    return now


def _spec(**kw: Any) -> store.Spec:
    base: dict[str, Any] = {
        "name": "agent 0.2.0", "artifact": "agent", "release": "0.2.0",
        "target": "agent/camfleet-agent-0.2.0.tar.gz", "filter": store.Filter(),
        "waves": (plan.WaveSpec(count=2), plan.WaveSpec(percent=50), plan.WaveSpec(percent=100)),
        "success_threshold": 1.0, "failure_threshold": 0.0, "soak_s": 0.0,
    }  # fmt: skip
    base.update(kw)
    return store.Spec(**base)


def _create(registry: Registry, spec: store.Spec, dry: bool = False) -> store.Planned:
    with registry.sessions.begin() as db:
        camp, planned = store.create(db, spec, "alice", time.time(), limit=1000, dry_run=dry,
                                     campaign_id=None if dry else "r-test")  # fmt: skip
        assert (camp is None) is dry
        return planned


def _tick(registry: Registry, at: float | None = None) -> list[Outgoing]:
    sent: list[Outgoing] = []
    runner.tick_all(registry.sessions, sent.append, at or time.time(), "Europe/Rome")
    return sent


def _rows(registry: Registry, cid: str = "r-test") -> dict[str, CampaignDevice]:
    with registry.sessions() as db:
        rows = db.query(CampaignDevice).filter(CampaignDevice.campaign_id == cid).all()
        return {r.device_id: r for r in rows}


def test_filters_select_by_tags_site_hardware_kind_version_and_ids(registry: Registry) -> None:
    _fleet(registry)

    def picked(**flt: Any) -> set[str]:
        return set(_create(registry, _spec(filter=store.Filter(**flt)), dry=True).devices)

    assert picked() == set(FLEET)
    assert picked(tags=("phase:1", "north")) == set(FLEET[:6])
    assert picked(tags=("phase:1", "south")) == set()
    assert picked(sites=("gate-s",)) == set(FLEET[10:])
    assert picked(hardware="PI5") == {d for i, d in enumerate(FLEET) if i % 2 == 0}
    assert picked(current=("0.0.9",)) == set(FLEET[16:])
    assert picked(kind="node") == set()
    assert picked(device_ids=("cam-03", "cam-04"), sites=("gate-n",)) == {"cam-03", "cam-04"}
    planned = _create(registry, _spec(), dry=True)
    assert planned.wave_sizes() == [2, 8, 10]
    assert planned.from_release["cam-19"] == "0.0.9"
    with pytest.raises(store.Invalid, match="unknown or filtered-out"):
        picked(device_ids=("cam-99",))


def test_bad_input_is_refused_and_changes_nothing(registry: Registry) -> None:
    _fleet(registry)
    for bad, err in ((_spec(windows=("05:00-05:00",)), "same time"),
                     (_spec(filter=store.Filter(tags=("nobody",))), "no device"),
                     (_spec(waves=(plan.WaveSpec(),)), "either count or percent")):  # fmt: skip
        with pytest.raises(store.Invalid, match=err), registry.sessions.begin() as db:
            store.create(db, bad, "alice", time.time(), limit=1000)
    with pytest.raises(store.Invalid, match="more than 5"), registry.sessions.begin() as db:
        store.create(db, _spec(), "alice", time.time(), limit=5)
    with registry.sessions() as db:
        assert db.query(Campaign).count() == 0


def test_one_active_campaign_per_device(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec(filter=store.Filter(sites=("gate-n",))))
    with pytest.raises(store.Conflict, match="r-test"), registry.sessions.begin() as db:
        store.create(db, _spec(filter=store.Filter(tags=("north",))), "bob", time.time(),
                     limit=1000)  # fmt: skip
    with registry.sessions.begin() as db:  # the other half of the fleet is free
        camp, _p = store.create(db, _spec(filter=store.Filter(sites=("gate-s",))), "bob",
                                time.time(), limit=1000)  # fmt: skip
        assert camp is not None


def test_update_states_move_forward_only_and_stale_ones_are_counted(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec())
    sent = _tick(registry)
    asked = sorted(json.loads(o.payload)["id"] for o in sent)
    assert len(asked) == 2 and all(o.retain and o.qos == 1 for o in sent)
    body = json.loads(sent[0].payload)
    assert (body["campaign"], body["release"], body["target"]) == (
        "r-test", "0.2.0", "agent/camfleet-agent-0.2.0.tar.gz")  # fmt: skip
    first, second = asked
    stats = registry.apply([
        _state(first, "r-test", "downloading", progress=40.0),
        _state(first, "r-test", "installing"),
        _state(first, "r-test", "downloading"),  # backwards: ignored, counted
        _state(first, "r-old", "failed"),  # another campaign: ignored
        _state(first, "r-test", "failed", release="9.9"),  # another release: ignored, counted
        _state(second, "r-test", "trial", attempt=1),
        _state(second, "r-test", "trial", attempt=1),  # a redelivery: nothing new
    ])  # fmt: skip
    assert stats.ignored == 4
    rows = _rows(registry)
    assert rows[first].state == m.INSTALLING and rows[first].progress == 40.0
    assert rows[second].state == m.TRIAL and rows[second].attempt == 1
    with registry.sessions() as db:
        camp = db.get(Campaign, "r-test")
        assert camp is not None and camp.ignored_reports == 2  # backwards, other release
    registry.apply(
        [
            _state(first, "r-test", "committed"),
            _state(second, "r-test", "rolled_back", error="unhealthy: no frames"),
        ]
    )
    registry.apply([_state(second, "r-test", "committed")])  # after the end: ignored
    sent = _tick(registry)
    cleared = {contract.parse_topic(o.topic)[0] for o in sent if o.payload == b""}
    assert cleared == {first, second}
    rows = _rows(registry)
    assert rows[second].state == m.ROLLED_BACK and rows[second].error == "unhealthy: no frames"
    with registry.sessions() as db:
        camp = db.get(Campaign, "r-test")
        assert camp is not None and camp.state == m.HALTED
        assert camp.reason == "wave 1: 1 of 2 failed or unhealthy (more than 0.0%)"
    assert all(r.state == m.SKIPPED for d, r in rows.items() if d not in asked)
    assert not [o for o in sent if o.payload]  # nobody else was asked


def test_cancel_clears_devices_not_started_and_frees_them(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec(waves=(plan.WaveSpec(percent=100),), rate_per_min=3))
    asked = sorted(json.loads(o.payload)["id"] for o in _tick(registry))
    assert len(asked) == 3
    registry.apply([_state(asked[0], "r-test", "downloading")])
    with registry.sessions.begin() as db:
        _camp, out = actions.cancel(db, "r-test", time.time())
    assert sorted(contract.parse_topic(o.topic)[0] for o in out) == asked[1:]
    assert all(o.payload == b"" and o.retain for o in out)
    rows = _rows(registry)
    assert rows[asked[0]].state == m.DOWNLOADING  # it goes on and reports
    assert sum(r.state == m.SKIPPED for r in rows.values()) == len(FLEET) - 1
    with pytest.raises(store.Conflict), registry.sessions.begin() as db:
        actions.cancel(db, "r-test", time.time())
    with registry.sessions.begin() as db:  # every device but the one still installing is free
        camp2, planned = store.create(db, _spec(filter=store.Filter(
            device_ids=tuple(d for d in FLEET if d != asked[0]))), "bob", time.time(),
            limit=1000)  # fmt: skip
        assert camp2 is not None and len(planned.devices) == len(FLEET) - 1
    with pytest.raises(store.Conflict), registry.sessions.begin() as db:
        store.create(db, _spec(filter=store.Filter(device_ids=(asked[0],))), "bob", time.time(),
                     limit=1000)  # fmt: skip


def test_pause_resume_and_their_refusals(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec())
    with registry.sessions.begin() as db:
        assert actions.pause(db, "r-test", time.time()).state == m.PAUSED
    assert _tick(registry) == []  # paused: nobody asked
    with pytest.raises(store.Conflict), registry.sessions.begin() as db:
        actions.pause(db, "r-test", time.time())
    with registry.sessions.begin() as db:
        assert actions.resume(db, "r-test", time.time()).state == m.RUNNING
    assert len(_tick(registry)) == 2
    with pytest.raises(store.NotFound), registry.sessions.begin() as db:
        actions.resume(db, "r-nothing", time.time())


def test_rollback_campaign_takes_committed_devices_back(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec(waves=(plan.WaveSpec(percent=100),), failure_threshold=0.5,
                            success_threshold=0.0))  # fmt: skip
    asked = sorted(json.loads(o.payload)["id"] for o in _tick(registry))
    old = [d for d in asked if d in FLEET[:16]][:3]
    older = [d for d in asked if d in FLEET[16:]][:1]
    registry.apply([_state(d, "r-test", "committed") for d in old + older]
                   + [_state(asked[0 if asked[0] not in old + older else -1], "r-test",
                             "failed")])  # fmt: skip
    with registry.sessions.begin() as db:
        done, out = actions.rollback(db, "r-test", "alice", time.time(), limit=1000, check=None)
    assert len(out) == len(FLEET) - len(old + older) - 1  # the rest: asked, cleared
    by_release = {c.release: c for c in done.created}
    assert set(by_release) == {"0.1.0", "0.0.9"} and done.left_out == []
    back = by_release["0.1.0"]
    assert back.allow_downgrade and back.rollback_of == "r-test"
    assert back.target == "agent/camfleet-agent-0.1.0.tar.gz"
    assert sorted(_rows(registry, back.id)) == sorted(old)
    with registry.sessions() as db:
        src = db.get(Campaign, "r-test")
        assert src is not None and src.state == m.CANCELLED
    sent = _tick(registry)
    wanted = [json.loads(o.payload) for o in sent if o.payload]
    assert {(w["id"], w["release"], w.get("allow_downgrade")) for w in wanted} == {
        *((d, "0.1.0", True) for d in old), *((d, "0.0.9", True) for d in older)}  # fmt: skip
    assert actions.target_for("model", "1.1", "model/ssd-1.2.tar.gz", "1.2") == (
        "model/ssd-1.1.tar.gz")  # fmt: skip
    assert actions.target_for("firmware", "3", "x", "4") == "firmware/camfleet-node-3.bundle"


def test_site_timezone_decides_the_window(registry: Registry) -> None:
    _fleet(registry)
    with registry.sessions.begin() as db:
        store.set_site_timezone(db, "gate-s", "America/New_York")
        with pytest.raises(store.Invalid):
            store.set_site_timezone(db, "gate-n", "Nowhere/Else")
    with pytest.raises(store.NotFound), registry.sessions.begin() as db:
        store.set_site_timezone(db, "gate-x", "UTC")
    _create(registry, _spec(waves=(plan.WaveSpec(percent=100),), windows=("22:00-04:00",)))
    at = 1795831200.0  # 2026-11-28 02:00 UTC: 03:00 in Rome, 21:00 in New York
    asked = {json.loads(o.payload)["id"] for o in _tick(registry, at)}
    assert asked == set(FLEET[:10])  # gate-n has no zone: the default (Rome)
    later = {json.loads(o.payload)["id"] for o in _tick(registry, at + 3600) if o.payload}
    assert later == set(FLEET[10:])  # 22:00 in New York, 04:00 in Rome


def test_release_must_be_published_in_the_tuf_repository(tmp_path: Path) -> None:
    tufrepo = pytest.importorskip("fleet_server.ota.tufrepo")
    repo = tufrepo.TufRepo.create(tmp_path / "repo", tmp_path / "keys")
    bundle = tmp_path / "a.tar.gz"
    bundle.write_bytes(b"agent 0.2.0 bundle")
    custom = {"camfleet": {"artifact": "agent", "release": "0.2.0"}}
    repo.add_target("agent/camfleet-agent-0.2.0.tar.gz", bundle, custom)
    check = actions.repo_check(tmp_path / "repo")
    with pytest.raises(store.Invalid, match="not published"):
        check("agent", "0.2.0", "agent/camfleet-agent-0.2.0.tar.gz")  # staged only
    repo.publish()
    check("agent", "0.2.0", "agent/camfleet-agent-0.2.0.tar.gz")
    with pytest.raises(store.Invalid, match=r"not model 0\.2\.0"):
        check("model", "0.2.0", "agent/camfleet-agent-0.2.0.tar.gz")
    with pytest.raises(store.Invalid, match="not published"):
        check("agent", "0.3.0", "agent/camfleet-agent-0.3.0.tar.gz")
    with pytest.raises(store.Invalid, match="cannot be read"):
        actions.repo_check(tmp_path / "nothing")("agent", "1", "agent/x")


def test_health_after_commit_comes_from_the_registry_and_its_alerts(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec(waves=(plan.WaveSpec(percent=100),), soak_s=60.0,
                            failure_threshold=1.0, success_threshold=0.0))  # fmt: skip
    asked = sorted(json.loads(o.payload)["id"] for o in _tick(registry))
    away, gone, fine = asked[:3]
    registry.apply([_state(d, "r-test", "committed") for d in (away, gone, fine)])
    t = time.time()
    offline = {"state": "offline", "kind": "agent", "reason": "connection_lost"}
    registry.apply([_msg("status", away, offline, t + 2), _msg("status", gone, offline, t + 2)])
    registry.apply([_beat(away, t + 3)])  # back again: still, it was away during the soak
    _tick(registry, t + 4)
    rows = _rows(registry)
    assert (rows[away].healthy, rows[away].error) == (False, "unhealthy: offline after commit")
    assert (rows[gone].healthy, rows[gone].error) == (False, "unhealthy: offline after commit")
    assert rows[fine].healthy is None  # soaking
    _tick(registry, t + 61)
    assert _rows(registry)[fine].healthy is True


def test_a_big_wave_is_published_in_steps(registry: Registry) -> None:
    _fleet(registry)
    _create(registry, _spec(waves=(plan.WaveSpec(percent=100),), rate_per_min=1000))
    for expect in (8, 8, 4, 0):
        sent: list[Outgoing] = []
        runner.tick_all(registry.sessions, sent.append, time.time(), "UTC", max_out=8)
        assert len(sent) == expect
    assert all(r.asked_at is not None for r in _rows(registry).values())
