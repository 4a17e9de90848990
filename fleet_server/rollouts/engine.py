"""The rollout engine's decisions, on plain data: campaign + device states + clock -> what
to do. The tick (fleet_server.rollouts.tick) reads the rows, calls ``decide`` and carries
the decision out (publish, clear, write); nothing here touches the database or the broker.

Rules, per tick:

- a device asked ``device_deadline_s`` ago that has not reached committed, failed or
  rolled back counts as failed (``deadline: ...``);
- a committed device soaks for ``soak_s``: it must not go offline between its commit and
  the end of the soak, nor get a health alert between being asked and that end; then it is
  healthy, else unhealthy. The tick gives the times of those events (from the registry and
  the alert history), so a tick that comes late judges the same as one on time;
- the current wave halts the campaign as soon as its failures (failed + rolled back +
  unhealthy after commit) exceed ``failure`` x wave size; it passes when every device of it
  is judged and the healthy ones reach ``success`` x wave size, else it halts too;
- only a running campaign asks new devices: those of the current wave, in plan order, at
  most ``rate_per_min`` asked in any 60 s, and only inside a maintenance window in each
  device's local time;
- every device that ended (committed, failed, rolled back) has its retained desired
  message cleared again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fleet_server.rollouts import model as m
from fleet_server.rollouts.plan import Window, in_windows

_EPS = 1e-9  # so a threshold exactly at the boundary compares as the number it is meant


@dataclass(frozen=True)
class Policy:
    """What the engine needs of a campaign."""

    state: str
    wave: int
    wave_ends: tuple[int, ...]
    success: tuple[float, ...]  # per wave, 0..1
    failure: tuple[float, ...]  # per wave, 0..1
    soak_s: float
    rate_per_min: int
    windows: tuple[Window, ...]
    device_deadline_s: float


@dataclass(frozen=True)
class DeviceView:
    """A campaign device with what the registry knows of its health now."""

    id: str
    wave: int
    position: int
    state: str
    asked_at: float | None = None
    committed_at: float | None = None
    healthy: bool | None = None
    cleared: bool = False
    offline_at: float | None = None  # first time seen offline since it committed
    degraded_at: float | None = None  # first health alert opened since it was asked
    tz: str = "UTC"


@dataclass
class Decision:
    ask: list[str] = field(default_factory=list)  # publish update_desired
    fail: list[tuple[str, str]] = field(default_factory=list)  # (device, error)
    health: list[tuple[str, bool, str | None]] = field(default_factory=list)
    clear: list[str] = field(default_factory=list)  # publish an empty retained desired
    skip: list[tuple[str, str]] = field(default_factory=list)  # never asked; (device, why)
    wave: int | None = None  # the new current wave
    state: str | None = None  # the new campaign state (halted, finished)
    reason: str | None = None

    def empty(self) -> bool:
        return not (self.ask or self.fail or self.health or self.clear or self.skip) and (
            self.wave is None and self.state is None
        )


@dataclass(frozen=True)
class WaveCounts:
    size: int
    good: int  # committed and healthy after the soak
    bad: int  # failed, rolled back, unhealthy after commit
    judged: int  # good + bad + skipped


def wave_counts(devices: Sequence[DeviceView], wave: int) -> WaveCounts:
    size = good = bad = judged = 0
    for d in devices:
        if d.wave != wave:
            continue
        size += 1
        if d.state == m.COMMITTED and d.healthy is True:
            good += 1
        elif d.state in (m.FAILED, m.ROLLED_BACK) or (
            d.state == m.COMMITTED and d.healthy is False
        ):
            bad += 1
        elif d.state != m.SKIPPED:
            continue
        judged += 1
    return WaveCounts(size, good, bad, judged)


def too_many_failures(bad: int, size: int, threshold: float) -> bool:
    return size > 0 and bad > threshold * size + _EPS


def enough_healthy(good: int, size: int, threshold: float) -> bool:
    return good >= threshold * size - _EPS


def _judge_device(d: DeviceView, p: Policy, now: float, out: Decision) -> DeviceView:
    """Deadline and post-commit health of one device; the device as it is after them."""
    asked = d.asked_at
    if d.state not in m.TERMINAL and asked is not None and now - asked > p.device_deadline_s:
        out.fail.append((d.id, f"deadline: no result within {p.device_deadline_s:.0f} s"))
        return replace(d, state=m.FAILED)
    if d.state == m.COMMITTED and d.healthy is None and d.committed_at is not None:
        soak_end = d.committed_at + p.soak_s
        if d.offline_at is not None and d.offline_at <= soak_end:
            out.health.append((d.id, False, "unhealthy: offline after commit"))
            return replace(d, healthy=False)
        if d.degraded_at is not None and d.degraded_at <= soak_end:
            out.health.append((d.id, False, "unhealthy: degraded after commit"))
            return replace(d, healthy=False)
        if now >= soak_end:
            out.health.append((d.id, True, None))
            return replace(d, healthy=True)
    return d


def decide(p: Policy, devices: Sequence[DeviceView], now: float) -> Decision:
    out = Decision()
    if p.state == m.FINISHED:
        devs = list(devices)
    else:
        devs = [_judge_device(d, p, now, out) for d in devices]
    for d in devs:
        if d.state in (m.COMMITTED, m.FAILED, m.ROLLED_BACK) and not d.cleared:
            out.clear.append(d.id)

    wave = p.wave
    state = p.state
    if state in (m.RUNNING, m.PAUSED):
        while wave < len(p.wave_ends):
            c = wave_counts(devs, wave)
            if too_many_failures(c.bad, c.size, p.failure[wave]):
                state, out.reason = (
                    m.HALTED,
                    (
                        f"wave {wave + 1}: {c.bad} of {c.size} failed or unhealthy "
                        f"(more than {p.failure[wave]:.1%})"
                    ),
                )
                break
            if c.judged < c.size:
                break  # the wave is still going
            if not enough_healthy(c.good, c.size, p.success[wave]):
                state, out.reason = (
                    m.HALTED,
                    (
                        f"wave {wave + 1}: {c.good} of {c.size} healthy "
                        f"(less than {p.success[wave]:.1%})"
                    ),
                )
                break
            wave += 1  # passed (an empty wave passes at once)
        if state != m.HALTED and wave >= len(p.wave_ends):
            state = m.FINISHED
            out.reason = "every wave passed"
        if wave != p.wave:
            out.wave = wave
        if state != p.state:
            out.state = state
    if state in (m.HALTED, m.FINISHED):
        why = "campaign halted" if state == m.HALTED else "no wave reaches it"
        out.skip = [(d.id, why) for d in devs if d.state == m.PENDING and d.asked_at is None]
        return out
    if state != m.RUNNING:
        return out

    recent = sum(1 for d in devs if d.asked_at is not None and now - d.asked_at < 60.0)
    budget = p.rate_per_min - recent
    waiting = sorted(
        (d for d in devs if d.wave == wave and d.state == m.PENDING and d.asked_at is None),
        key=lambda d: d.position,
    )
    for d in waiting:
        if budget <= 0:
            break
        if in_windows(p.windows, now, d.tz):
            out.ask.append(d.id)
            budget -= 1
    return out
