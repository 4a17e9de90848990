"""The update state machine: every transition in one table, decisions without I/O.

States (``Record.state``)::

    idle ─desired→ downloading ─downloaded→ verifying ─verified→ installing ─installed→
    switching ─switched→ trial ─healthy→ committed
                               └─unhealthy→ rolled_back
    any busy state ─error→ failed

A ``Record`` is what ``state.json`` holds (``agent.ota.store`` writes it atomically). The
wire states (``contract.UPDATE_STATES``) are coarser: verifying, installing and switching are
all reported as ``installing``.

Loop guard: every install attempt of (campaign, release) is counted in the record before it
starts, so a crash or a power cut in the middle counts too. Once a release has used
``max_attempts`` in one campaign it is not tried again until a desired from another campaign
(or for another release) arrives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IDLE = "idle"
DOWNLOADING = "downloading"
VERIFYING = "verifying"
INSTALLING = "installing"
SWITCHING = "switching"
TRIAL = "trial"
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"
FAILED = "failed"

STATES = (
    IDLE,
    DOWNLOADING,
    VERIFYING,
    INSTALLING,
    SWITCHING,
    TRIAL,
    COMMITTED,
    ROLLED_BACK,
    FAILED,
)
BUSY = (DOWNLOADING, VERIFYING, INSTALLING, SWITCHING)
RESTING = (IDLE, COMMITTED, ROLLED_BACK, FAILED)

# (state, event) -> next state. Nothing else moves the machine.
TRANSITIONS: dict[tuple[str, str], str] = {
    **{(s, "desired"): DOWNLOADING for s in RESTING},
    (DOWNLOADING, "downloaded"): VERIFYING,
    (VERIFYING, "verified"): INSTALLING,
    (INSTALLING, "installed"): SWITCHING,
    (SWITCHING, "switched"): TRIAL,
    (TRIAL, "healthy"): COMMITTED,
    (TRIAL, "unhealthy"): ROLLED_BACK,
    **{(s, "error"): FAILED for s in BUSY},
    # a model is promoted without a restart: no trial of the process
    (SWITCHING, "promoted"): COMMITTED,
}

# what update_state says for each state
WIRE_STATE = {
    DOWNLOADING: "downloading",
    VERIFYING: "installing",
    INSTALLING: "installing",
    SWITCHING: "installing",
    TRIAL: "trial",
    COMMITTED: "committed",
    ROLLED_BACK: "rolled_back",
    FAILED: "failed",
}


class TransitionError(Exception):
    """An event that the current state does not accept (a bug, never bad input)."""


@dataclass(frozen=True)
class Desired:
    """One update_desired, as the server sent it."""

    campaign: str
    artifact: str
    release: str
    target: str
    allow_downgrade: bool = False
    trial_s: float | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Desired:
        trial = body.get("trial_s")
        return cls(
            campaign=str(body["campaign"]),
            artifact=str(body["artifact"]),
            release=str(body["release"]),
            target=str(body["target"]),
            allow_downgrade=bool(body.get("allow_downgrade", False)),
            trial_s=float(trial) if trial is not None else None,
        )

    def key(self) -> str:
        return f"{self.campaign}/{self.artifact}/{self.release}"


@dataclass(frozen=True)
class Record:
    """The persisted update state (state.json)."""

    state: str = IDLE
    desired: Desired | None = None
    previous: str | None = None  # release running before the switch (rollback target)
    attempts: dict[str, int] = field(default_factory=dict)  # Desired.key() -> attempts
    trial_deadline: float | None = None  # wall-clock seconds
    trial_boots: int = 0  # starts of the new release during its trial
    error: str | None = None
    reported: str | None = None  # last wire state acknowledged as sent

    def attempt(self) -> int:
        return self.attempts.get(self.desired.key(), 0) if self.desired else 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        state = str(data.get("state", IDLE))
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        raw = data.get("desired")
        desired = Desired(**raw) if isinstance(raw, dict) else None
        attempts = {str(k): int(v) for k, v in dict(data.get("attempts") or {}).items()}
        deadline = data.get("trial_deadline")
        return cls(
            state=state,
            desired=desired,
            previous=data.get("previous"),
            attempts=attempts,
            trial_deadline=float(deadline) if deadline is not None else None,
            trial_boots=int(data.get("trial_boots", 0)),
            error=data.get("error"),
            reported=data.get("reported"),
        )


def step(record: Record, event: str, **changes: Any) -> Record:
    """The record after ``event``; raises TransitionError when the table has no entry."""
    nxt = TRANSITIONS.get((record.state, event))
    if nxt is None:
        raise TransitionError(f"event {event!r} not allowed in state {record.state!r}")
    return dataclasses.replace(record, state=nxt, **changes)


# ------------------------------------------------------------------ decisions
ACT_NOTHING = "nothing"
ACT_REPORT = "report"  # answer with the record's state again (already there)
ACT_REFUSE_LOOP = "refuse_loop"
ACT_INSTALL = "install"
ACT_BUSY = "busy"


def on_desired(
    record: Record, desired: Desired, running: str | None, max_attempts: int
) -> tuple[str, Record]:
    """What to do with an update_desired; the record to save before acting."""
    if record.state in BUSY or record.state == TRIAL:
        if record.desired == desired:
            return ACT_REPORT, record
        return ACT_BUSY, record
    if running == desired.release and record.state != FAILED:
        # already there: a committed device says so again and does nothing
        return ACT_REPORT, record
    used = record.attempts.get(desired.key(), 0)
    if used >= max_attempts:
        return ACT_REFUSE_LOOP, record
    attempts = dict(record.attempts)
    attempts[desired.key()] = used + 1
    new = step(
        record,
        "desired",
        desired=desired,
        attempts=attempts,
        error=None,
        previous=running,
        trial_deadline=None,
        trial_boots=0,
        reported=None,
    )
    return ACT_INSTALL, new


# what to do at start for a record found on disk
BOOT_RESUME_INSTALL = "resume_install"  # a busy state: start the install over (counts)
BOOT_REDO_SWITCH = "redo_switch"
BOOT_TRIAL = "trial"  # keep the trial with its remaining deadline
BOOT_ROLLBACK = "rollback"
BOOT_NOTHING = "nothing"


def on_boot(
    record: Record, current: str | None, now: float, max_attempts: int, max_trial_boots: int
) -> str:
    """The decision at start after a crash or a power cut, from the record and the release
    ``current`` points to."""
    st = record.state
    desired = record.desired
    if desired is None or st in RESTING:
        return BOOT_NOTHING
    if st == SWITCHING:
        return BOOT_TRIAL if current == desired.release else BOOT_REDO_SWITCH
    if st == TRIAL:
        if current != desired.release:
            return BOOT_ROLLBACK
        late = record.trial_deadline is not None and now >= record.trial_deadline
        if late or record.trial_boots >= max_trial_boots:
            return BOOT_ROLLBACK
        return BOOT_TRIAL
    # downloading, verifying, installing: begin again if the loop guard allows
    if record.attempt() >= max_attempts:
        return BOOT_NOTHING  # the caller marks it failed (loop_guard)
    return BOOT_RESUME_INSTALL


def release_key(release: str) -> tuple[int, ...]:
    """``"1.2.10"`` -> (1, 2, 10); ValueError for anything but dot-separated numbers."""
    parts = release.split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"release {release!r} is not dot-separated numbers")
    return tuple(int(p) for p in parts)


def is_downgrade(running: str | None, wanted: str) -> bool:
    """Whether ``wanted`` is older than ``running`` (never for an unknown running release)."""
    if running is None:
        return False
    try:
        return release_key(wanted) < release_key(running)
    except ValueError:
        return False
