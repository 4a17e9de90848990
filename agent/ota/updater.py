"""The agent's updater: update_desired in, update_state out, the install in a worker thread.

Every step saves the record (``state.json``) *before* it acts, so after a crash or a power
cut the next start knows what was in progress (``machine.on_boot``). The decisions are in
``agent.ota.machine``; this module acts on them: it owns the record, runs the install
(``agent.ota.install``: TUF fetch, checks, unpack into the backend or the model slots, the
accuracy gate) in a worker thread, then the switch, the restart seam, the trial and the
commit, and reports ``update_state``.

The restart seam is a callable: in the agent it stops the process cleanly and the launcher
(``agent.ota.launch``, run by systemd) starts it again from the new ``current``.

Test hook (``agent.ota.crash``): ``CAMFLEET_OTA_CRASH_AT=<point>:<marker file>`` makes the
agent SIGKILL itself once (the marker file records that it did) at ``download`` (half the
bytes written), ``verify``, ``write`` (release half unpacked), ``switch`` (link switched,
record not yet in trial) or ``trial`` (first tick of the trial). ``CAMFLEET_OTA_POWER_CUT=1``
beside it SIGKILLs the whole process group instead (the launcher too: a power cut).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.ota import errors as e
from agent.ota import machine as m
from agent.ota.backend import InstallBackend, make_backend
from agent.ota.crash import crash_point
from agent.ota.install import Gate, GateOutcome, Installer, fetch_config
from agent.ota.settings import OtaSettings
from agent.ota.slots import AppSlots
from agent.ota.store import StateStore

log = logging.getLogger(__name__)

Publish = Callable[[str, dict[str, object]], bool]


class Stopping(Exception):
    """The agent is stopping: the install unwinds and the next start resumes it."""


def release_of_code(releases_dir: Path) -> str | None:
    """The release this very code was started from, when it runs from a release dir."""
    here = Path(__file__).resolve().parent.parent.parent  # <release dir>/agent/ota/..
    try:
        if here.parent == releases_dir.resolve():
            return here.name
    except OSError:
        return None
    return None


class Updater:
    def __init__(
        self,
        settings: OtaSettings,
        state_dir: Path,
        publish: Publish,
        restart: Callable[[], None],
        *,
        default_ca: Path | None = None,
        backend: InstallBackend | None = None,
        clock: Callable[[], float] = time.time,
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.dir = Path(state_dir) / "ota"
        self.store = StateStore(self.dir / "state.json")
        self.publish = publish
        self.restart = restart
        self.clock = clock
        self.gate = gate or self.evaluation_gate
        self.backend = backend or make_backend(settings.backend, settings.slots_dir)
        self.installer = Installer(
            fetch_config(settings, self.dir, default_ca),
            self.backend,
            settings.model_slots_dir,
            step=self._step,
            report=lambda progress: self._report(self.record, progress=progress),
            progress=self._progress,
        )
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.record = self.store.load()
        self.started_from = (
            release_of_code(AppSlots(settings.slots_dir).releases) or self.backend.running()
        )
        self._last_progress = -100.0
        self._restarting = False

    # ------------------------------------------------------------ public
    def versions(self) -> dict[str, str]:
        """The running releases for the heartbeat: ``agent`` and, with model slots, ``model``."""
        out = {"agent": self.started_from} if self.started_from else {}
        model = self._running_for("model")
        if model:
            out["model"] = model
        return out

    def start(self) -> None:
        """At agent start: settle what a crash left, per ``machine.on_boot``."""
        with self._lock:
            rec = self.record
            decision = m.on_boot(
                rec,
                self.backend.running(),
                self.clock(),
                self.settings.max_attempts,
                self.settings.max_trial_boots,
            )
            log.info("update state at start: %s (%s)", rec.state, decision)
            desired = rec.desired
            if decision == m.BOOT_NOTHING and rec.state in m.BUSY and desired is not None:
                self._save(
                    dataclasses.replace(
                        rec,
                        state=m.FAILED,
                        error=f"{e.LOOP_GUARD}: {rec.attempt()} attempts of {desired.release}",
                    )
                )
            elif decision == m.BOOT_RESUME_INSTALL and desired is not None:
                attempts = dict(rec.attempts)
                attempts[desired.key()] = rec.attempt() + 1
                self._save(dataclasses.replace(rec, state=m.DOWNLOADING, attempts=attempts))
                self._spawn(self._install)
            elif rec.state == m.SWITCHING and desired is not None and desired.artifact == "model":
                self._spawn(self._promote_model)  # the gate passed before the crash
            elif decision == m.BOOT_REDO_SWITCH:
                self._spawn(self._switch)
            elif decision == m.BOOT_TRIAL and rec.state == m.SWITCHING:
                self._enter_trial()
            elif decision == m.BOOT_ROLLBACK:
                self._rollback("trial deadline passed or too many starts")

    def handle_desired(self, body: dict[str, Any]) -> None:
        """An update_desired from the server (an empty retained one has no body: ignored)."""
        if not body or not self.settings.enabled:
            return
        desired = m.Desired.from_body(body)
        with self._lock:
            rec = self.record
            same = rec.desired == desired
            settled = rec.state in (m.FAILED, m.ROLLED_BACK) and same
            transient = (rec.error or "").startswith(e.DOWNLOAD)
            if settled and not transient:
                self._report(rec)  # refused or rolled back before: not again in this campaign
                return
            running = self._running_for(desired.artifact)
            action, new = m.on_desired(rec, desired, running, self.settings.max_attempts)
            if action == m.ACT_REPORT:
                if running == desired.release and not same:
                    new = dataclasses.replace(
                        rec, state=m.COMMITTED, desired=desired, error=None, reported=None
                    )
                    self._save(new)
                self._report(new)
            elif action == m.ACT_BUSY:
                log.warning("update to %s ignored: %s in progress", desired.release, rec.state)
            elif action == m.ACT_REFUSE_LOOP:
                failed = dataclasses.replace(
                    rec,
                    state=m.FAILED,
                    desired=desired,
                    error=f"{e.LOOP_GUARD}: {rec.attempts.get(desired.key(), 0)} attempts",
                    reported=None,
                )
                self._save(failed)
                self._report(failed)
            else:
                self._save(new)
                self._spawn(self._install)

    def on_connected(self) -> None:
        """After every (re)connect: say the state if it was not sent yet."""
        with self._lock:
            rec = self.record
            if rec.desired is not None and rec.reported != m.WIRE_STATE.get(rec.state):
                self._report(rec)

    def tick(self, connected: bool, heartbeats: int, pipeline_ok: bool) -> None:
        """From the main loop: commit a trial once healthy, roll back when it is late."""
        with self._lock:
            rec = self.record
            if rec.state != m.TRIAL or rec.desired is None or self._restarting:
                return
            if rec.desired.release != self.started_from:
                return  # the old code before its restart: not its trial
            crash_point("trial")
            if connected and pipeline_ok and heartbeats >= self.settings.trial_heartbeats:
                self._commit()
            elif rec.trial_deadline is not None and self.clock() > rec.trial_deadline:
                self._rollback(f"not healthy within {self._trial_s(rec):.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    # ------------------------------------------------------------ steps
    def _spawn(self, target: Callable[[], None]) -> None:
        """Run a step in a worker thread, after the previous worker (a failed install that
        is still unwinding) has ended: one install at a time."""
        previous = self._worker
        step = self._guarded(target)

        def run() -> None:
            if previous is not None:
                previous.join()
            step()

        self._worker = threading.Thread(target=run, name="ota", daemon=True)
        self._worker.start()

    def _guarded(self, step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                step()
            except Stopping:
                log.info("install paused: the agent stops (resumed at the next start)")
            except e.OtaError as exc:
                self._fail(exc)
            except OSError as exc:
                self._fail(e.OtaError(e.INSTALL, str(exc)))

        return run

    def _install(self) -> None:
        desired = self.record.desired
        if desired is None:
            return
        if desired.artifact == "model":
            self.installer.model(desired, self.gate)
            self._promote_model()
            return
        if desired.artifact != "agent":
            raise e.OtaError(e.INSTALL, f"artifact {desired.artifact} is not installed here")
        self.installer.agent(desired, self.started_from)
        self._switch()

    def _promote_model(self) -> None:
        desired = self.record.desired
        if desired is None:
            return
        slots = self.installer.model_slots()
        slots.switch(desired.release)
        with self._lock:
            self._save(m.step(self.record, "promoted", error=None))
            self._report(self.record)
            self._restarting = True
        self.installer.clean()
        previous = self.record.previous
        slots.prune({desired.release} if previous is None else {desired.release, previous})
        self.restart()

    def evaluation_gate(self, candidate: Path, current: Path | None) -> GateOutcome:
        """The default gate: the bundle's evaluation set (agent.ota.model_gate.evaluate).
        A caller with the live pipeline may pass one that adds the shadow run."""
        from agent.ota.model_gate import evaluate  # loads the detector runtime: only here

        result = evaluate(candidate, current, self.settings.model_gate)
        return GateOutcome(result.ok, result.reason, result.detail, dict(result.figures))

    def _switch(self) -> None:
        rec = self.record
        if rec.desired is None:
            return
        self.backend.activate(rec.desired.release)
        crash_point("switch")
        self._enter_trial()

    def _enter_trial(self) -> None:
        with self._lock:
            rec = self.record
            deadline = self.clock() + self._trial_s(rec)
            self._save(m.step(rec, "switched", trial_deadline=deadline, trial_boots=0))
            release = rec.desired.release if rec.desired else None
            if release == self.started_from:
                return  # started from the new release already (a crash after the switch)
            log.info("switched to %s; restarting for its trial", release)
            self._restarting = True
        self.restart()

    def _commit(self) -> None:
        rec = self.record
        if rec.desired is None:
            return
        self.backend.mark_good(rec.desired.release, rec.previous)
        self._save(m.step(rec, "healthy", error=None))
        log.info("release %s committed", rec.desired.release)
        self._report(self.record)

    def _rollback(self, why: str) -> None:
        rec = self.record
        if rec.previous is None:
            log.error("trial of %s failed (%s) and there is no release to go back to", rec, why)
            return
        self.backend.rollback(rec.previous)
        self._save(m.step(rec, "unhealthy", error=f"{e.UNHEALTHY}: {why}"[:256]))
        log.warning("rolled back to %s: %s", rec.previous, why)
        self._restarting = True
        self.restart()

    def _fail(self, exc: e.OtaError) -> None:
        with self._lock:
            rec = self.record
            log.error("update to %s refused: %s", rec.desired, exc.wire)
            if rec.state in m.BUSY:
                self._save(m.step(rec, "error", error=exc.wire))
            self.installer.clean()
            self._report(self.record)

    # ------------------------------------------------------------ helpers
    def _step(self, event: str) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise Stopping
            self._save(m.step(self.record, event))

    def _save(self, record: m.Record) -> None:
        self.store.save(record)
        self.record = record

    def _trial_s(self, rec: m.Record) -> float:
        if rec.desired is not None and rec.desired.trial_s is not None:
            return rec.desired.trial_s
        return self.settings.trial_s

    def _running_for(self, artifact: str) -> str | None:
        if artifact == "agent":
            return self.started_from
        if artifact == "model" and self.settings.model_slots_dir is not None:
            return AppSlots(self.settings.model_slots_dir, marker_beside=True).running()
        return None

    def _progress(self, have: int, total: int) -> None:
        if self._stopping.is_set():
            raise Stopping
        pct = 100.0 * have / total if total else 100.0
        if have * 2 >= total:
            crash_point("download")
        if pct - self._last_progress >= 10.0 or have == total:
            self._last_progress = pct
            self._report(self.record, progress=round(pct, 1))

    def _report(self, rec: m.Record, *, progress: float | None = None) -> None:
        if rec.desired is None:
            return
        wire = m.WIRE_STATE.get(rec.state)
        if wire is None:
            return
        body: dict[str, object] = {
            "campaign": rec.desired.campaign,
            "artifact": rec.desired.artifact,
            "release": rec.desired.release,
            "state": wire,
            "attempt": rec.attempt(),
        }
        running = self._running_for(rec.desired.artifact)  # what runs now, not what is linked
        if running:
            body["running"] = running
        if progress is not None:
            body["progress"] = progress
        if rec.error:
            body["error"] = rec.error[:256]
        try:
            sent = self.publish("update_state", body)
        except AgentError as exc:
            log.error("update_state not sent: %s", exc)
            return
        with self._lock:
            if sent and rec.reported != wire and rec is self.record:
                self._save(dataclasses.replace(rec, reported=wire))
