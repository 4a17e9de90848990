"""The rollout engine's decisions on plain data with a fake clock: waves, thresholds at the
boundary, the rate limit, maintenance windows across midnight and in other zones, pause,
deadlines, post-commit health; and the planning helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

import pytest

from fleet_server.rollouts import engine, plan
from fleet_server.rollouts import model as m
from fleet_server.rollouts.engine import DeviceView, Policy, decide

T0 = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC).timestamp()  # 03:00 in Rome


def _policy(ends: Sequence[int], **kw: object) -> Policy:
    n = len(ends)
    base: dict[str, object] = {
        "state": m.RUNNING, "wave": 0, "wave_ends": tuple(ends), "success": (1.0,) * n,
        "failure": (0.0,) * n, "soak_s": 60.0, "rate_per_min": 10_000, "windows": (),
        "device_deadline_s": 600.0,
    }  # fmt: skip
    base.update(kw)
    return Policy(**base)  # type: ignore[arg-type]


def _fleet(ends: Sequence[int], **kw: object) -> list[DeviceView]:
    out = []
    for i in range(ends[-1]):
        wave = plan.wave_of(i, ends)
        out.append(DeviceView(id=f"d-{i:04d}", wave=wave, position=i, state=m.PENDING,
                              **kw))  # type: ignore[arg-type]  # fmt: skip
    return out


def _set(devs: list[DeviceView], ids: Sequence[str], **kw: object) -> list[DeviceView]:
    want = set(ids)
    return [replace(d, **kw) if d.id in want else d for d in devs]  # type: ignore[arg-type]


def _healthy(devs: list[DeviceView], ids: Sequence[str], at: float) -> list[DeviceView]:
    return _set(devs, ids, state=m.COMMITTED, asked_at=at - 10, committed_at=at - 5,
                healthy=True, cleared=True)  # fmt: skip


def test_wave_sizes_round_up_and_never_shrink() -> None:
    waves = [plan.WaveSpec(percent=1), plan.WaveSpec(percent=10), plan.WaveSpec(percent=50),
             plan.WaveSpec(percent=100)]  # fmt: skip
    assert plan.wave_ends(waves, 10_000) == [100, 1000, 5000, 10_000]
    assert plan.wave_ends(waves, 50) == [1, 5, 25, 50]
    assert plan.wave_ends([plan.WaveSpec(count=5), plan.WaveSpec(percent=1)], 100) == [5, 5]
    assert plan.wave_ends([plan.WaveSpec(count=500)], 20) == [20]
    with pytest.raises(plan.PlanError):
        plan.wave_ends([plan.WaveSpec(count=1, percent=5)], 10)
    with pytest.raises(plan.PlanError):
        plan.wave_ends([], 10)
    assert [plan.wave_of(i, [1, 5, 25]) for i in (0, 1, 4, 5, 24, 25)] == [0, 1, 1, 2, 2, 3]


def test_plan_order_is_a_stable_shuffle_per_campaign() -> None:
    ids = [f"cam-{i:03d}" for i in range(200)]
    a = plan.plan_order("r-1", ids)
    assert a == plan.plan_order("r-1", list(reversed(ids)))
    assert sorted(a) == ids and a != ids
    assert plan.plan_order("r-2", ids) != a


def test_windows_parse_and_refuse() -> None:
    assert plan.parse_window("01:00-05:00") == plan.Window(60, 300)
    assert plan.parse_window("22:30-04:00") == plan.Window(1350, 240)
    whole_day = plan.parse_window("00:00-24:00")
    assert all(whole_day.contains(minute) for minute in range(0, 1440))
    assert plan.parse_window("22:00-24:00").contains(1439)
    for bad in ("1:00-05:00", "01:00", "25:00-01:00", "01:60-02:00", "03:00-03:00",
                "24:00-01:00", "aa:bb-cc:dd"):  # fmt: skip
        with pytest.raises(plan.PlanError):
            plan.parse_window(bad)
    with pytest.raises(plan.PlanError):
        plan.zone("Mars/Olympus_Mons")


def test_window_across_midnight_in_each_sites_zone() -> None:
    night = plan.parse_windows(["22:00-04:00"])
    # 2026-11-28 02:00 UTC: 03:00 in Rome (inside), 21:00 the day before in New York
    assert plan.in_windows(night, T0, "Europe/Rome")
    assert not plan.in_windows(night, T0, "America/New_York")
    assert plan.in_windows(night, T0 + 3600, "America/New_York")  # 22:00 there
    assert not plan.in_windows(night, T0 + 3600, "Europe/Rome")  # 04:00: the end is out
    assert plan.in_windows((), T0, "Asia/Tokyo")  # no windows: any time
    devs = [
        DeviceView(id="rome", wave=0, position=0, state=m.PENDING, tz="Europe/Rome"),
        DeviceView(id="ny", wave=0, position=1, state=m.PENDING, tz="America/New_York"),
    ]
    p = _policy([2], windows=night)
    assert decide(p, devs, T0).ask == ["rome"]
    assert decide(p, devs, T0 + 3600).ask == ["ny"]
    assert decide(p, devs, T0 + 12 * 3600).ask == []  # midday everywhere


def test_rate_limit_counts_devices_asked_in_the_last_minute() -> None:
    devs = _fleet([100])
    p = _policy([100], rate_per_min=10)
    first = decide(p, devs, T0)
    assert first.ask == [f"d-{i:04d}" for i in range(10)]  # in plan order
    devs = _set(devs, first.ask, asked_at=T0)
    assert decide(p, devs, T0 + 30).ask == []
    assert decide(p, devs, T0 + 59.9).ask == []
    assert decide(p, devs, T0 + 60).ask == [f"d-{i:04d}" for i in range(10, 20)]


def test_waves_proceed_only_after_every_device_of_the_wave_is_judged() -> None:
    ends = [1, 10, 50, 100]
    devs = _fleet(ends)
    p = _policy(ends)
    d = decide(p, devs, T0)
    assert d.ask == ["d-0000"] and d.wave is None  # only the canary
    devs = _set(devs, ["d-0000"], asked_at=T0, state=m.COMMITTED, committed_at=T0 + 5)
    d = decide(p, devs, T0 + 10)
    assert d.clear == ["d-0000"] and d.ask == [] and d.health == []  # soaking
    d = decide(p, devs, T0 + 5 + 60)
    assert d.health == [("d-0000", True, None)]
    assert d.wave == 1 and d.ask == [f"d-{i:04d}" for i in range(1, 10)]
    devs = _healthy(devs, [f"d-{i:04d}" for i in range(50)], T0 + 100)
    d = decide(replace(p, wave=1), devs, T0 + 100)
    assert d.wave == 3  # waves 2 and 3 are judged: the fourth starts
    assert d.ask == [f"d-{i:04d}" for i in range(50, 100)]
    devs = _healthy(devs, [f"d-{i:04d}" for i in range(100)], T0 + 200)
    d = decide(replace(p, wave=3), devs, T0 + 200)
    assert d.state == m.FINISHED and d.reason == "every wave passed"


@pytest.mark.parametrize(
    ("size", "threshold", "failures", "halts"),
    [(10, 0.1, 1, False), (10, 0.1, 2, True), (100, 0.29, 29, False), (100, 0.29, 30, True),
     (100, 0.0, 1, True), (100, 0.07, 7, False), (100, 1.0, 100, False)],
)  # fmt: skip
def test_failure_threshold_halts_only_above_it(
    size: int, threshold: float, failures: int, halts: bool
) -> None:
    devs = _fleet([size])
    failed = [f"d-{i:04d}" for i in range(failures)]
    devs = _set(devs, failed, state=m.FAILED, asked_at=T0, cleared=True)
    d = decide(_policy([size], failure=(threshold,), success=(0.0,)), devs, T0 + 1)
    assert (d.state == m.HALTED) is halts
    if halts:
        assert d.reason is not None and f"{failures} of {size} failed" in d.reason
        assert d.ask == []  # a halted campaign asks nobody
        assert len(d.skip) == size - failures  # those never asked are left out


@pytest.mark.parametrize(("healthy", "passes"), [(9, True), (8, False)])
def test_success_threshold_is_reached_at_exactly_the_share(healthy: int, passes: bool) -> None:
    devs = _fleet([10, 20])
    ok = [f"d-{i:04d}" for i in range(healthy)]
    devs = _healthy(devs, ok, T0)
    devs = _set(devs, [f"d-{i:04d}" for i in range(healthy, 10)], state=m.ROLLED_BACK,
                asked_at=T0, cleared=True)  # fmt: skip
    d = decide(_policy([10, 20], success=(0.9, 0.9), failure=(1.0, 1.0)), devs, T0 + 1)
    if passes:
        assert d.wave == 1 and len(d.ask) == 10
    else:
        assert d.state == m.HALTED and d.reason is not None and "8 of 10 healthy" in d.reason
        assert {dev for dev, _why in d.skip} == {f"d-{i:04d}" for i in range(10, 20)}


def test_per_wave_thresholds_override_the_campaigns() -> None:
    devs = _set(_fleet([10, 20]), ["d-0000"], state=m.FAILED, asked_at=T0, cleared=True)
    strict_canary = _policy([10, 20], failure=(0.0, 0.5), success=(0.0, 0.0))
    assert decide(strict_canary, devs, T0).state == m.HALTED
    lenient = _policy([10, 20], failure=(0.5, 0.0), success=(0.0, 0.0))
    assert decide(lenient, devs, T0).state is None


def test_post_commit_health_is_judged_over_the_soak_even_when_the_tick_is_late() -> None:
    base = DeviceView(id="a", wave=0, position=0, state=m.COMMITTED, asked_at=T0,
                      committed_at=T0 + 10, cleared=True)  # fmt: skip
    p = _policy([1], failure=(0.0,), soak_s=60.0)
    assert decide(p, [base], T0 + 30).health == []  # still soaking
    assert decide(p, [base], T0 + 70).health == [("a", True, None)]  # exactly at its end
    offline = decide(p, [replace(base, offline_at=T0 + 20)], T0 + 30)
    assert offline.health == [("a", False, "unhealthy: offline after commit")]
    assert offline.state == m.HALTED  # an unhealthy device is a failure
    late = decide(p, [replace(base, offline_at=T0 + 70)], T0 + 500)  # judged late, at the end
    assert late.health == [("a", False, "unhealthy: offline after commit")]
    after = decide(p, [replace(base, offline_at=T0 + 71)], T0 + 500)  # gone after the soak
    assert after.health == [("a", True, None)]
    degraded = decide(p, [replace(base, degraded_at=T0 + 40)], T0 + 45)
    assert degraded.health == [("a", False, "unhealthy: degraded after commit")]


def test_a_device_that_never_reports_fails_at_its_deadline() -> None:
    devs = _set(_fleet([2]), ["d-0000"], asked_at=T0)
    devs = _set(devs, ["d-0001"], asked_at=T0, state=m.TRIAL)
    p = _policy([2], device_deadline_s=600.0, failure=(1.0,), success=(0.0,))
    assert decide(p, devs, T0 + 600).fail == []
    late = decide(p, devs, T0 + 601)
    assert [dev for dev, _why in late.fail] == ["d-0000", "d-0001"]
    assert late.fail[0][1] == "deadline: no result within 600 s"
    assert late.clear == ["d-0000", "d-0001"]  # their desired messages are taken back


def test_paused_and_cancelled_campaigns_ask_nobody_but_still_judge() -> None:
    devs = _set(_fleet([5]), ["d-0000"], asked_at=T0)
    for state in (m.PAUSED, m.CANCELLED, m.HALTED):
        d = decide(_policy([5], state=state, failure=(1.0,)), devs, T0 + 601)
        assert d.ask == []
        assert d.fail == [("d-0000", "deadline: no result within 600 s")]
    resumed = decide(_policy([5], failure=(1.0,)), devs, T0 + 1)
    assert resumed.ask == ["d-0001", "d-0002", "d-0003", "d-0004"]


def test_wave_counts_and_decision_helpers() -> None:
    devs = _fleet([4])
    devs = _healthy(devs, ["d-0000"], T0)
    devs = _set(devs, ["d-0001"], state=m.COMMITTED, healthy=False)
    devs = _set(devs, ["d-0002"], state=m.SKIPPED)
    assert engine.wave_counts(devs, 0) == engine.WaveCounts(size=4, good=1, bad=1, judged=3)
    assert engine.Decision().empty()
    assert not engine.too_many_failures(0, 0, 0.0)
