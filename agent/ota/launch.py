"""The launcher: the agent's "bootloader" for application-level A/B.

``python -m agent.ota.launch --config agent.toml`` (systemd runs this, from the installed
package, never from a release dir) starts the agent as a child process from the release
that ``<slots_dir>/current`` names::

    PYTHONPATH=<slots_dir>/releases/<release>  python -m agent.cli --config agent.toml

(the resolved directory, so a switch while it runs never mixes two releases' modules), and
starts it again whenever it exits (the updater's restart seam is a clean exit). Before each
start and while a trial runs it reads the update record: a release that is not healthy by
its trial deadline (or that crashed ``max_trial_boots`` times) is rolled back here, by code
that does not come from the release under trial — so a release that cannot even start
is rolled back too. After a power cut it first discards half-written release dirs.

``init`` installs a first (factory) release: ``python -m agent.ota.launch --config X init
--bundle camfleet-agent-1.0.0.tar.gz --release 1.0.0``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from agent.config import AgentSettings
from agent.ota import errors as e
from agent.ota import machine as m
from agent.ota.backend import KEPT_BUNDLE
from agent.ota.install import check_manifest, model_slots
from agent.ota.settings import OtaSettings
from agent.ota.slots import AppSlots
from agent.ota.store import StateStore
from common.cli import EXIT_USAGE, fail, make_app, run_app
from common.logs import setup_logging
from common.model_bundle import MANIFEST as MODEL_MANIFEST
from common.model_bundle import BundleError, read_model_bundle
from common.settings import ConfigError, load_settings

log = logging.getLogger("agent.ota.launch")

_POLL_S = 0.2
_STOP_GRACE_S = 15.0
_RESTART_MIN_S = 0.5
_RESTART_MAX_S = 30.0
_QUICK_EXIT_S = 10.0  # a child that lived less than this restarts with a growing delay
_PR_SET_PDEATHSIG = 1
_MANIFEST_MAX = 1 << 20  # a model bundle's bundle.json is a few KiB


class Launcher:
    def __init__(
        self,
        config: Path,
        settings: AgentSettings,
        ota: OtaSettings,
        python: str = sys.executable,
    ) -> None:
        self.config = Path(config).resolve()  # the agent starts in its release dir
        self.ota = ota
        self.python = python
        self.slots = AppSlots(ota.slots_dir)
        self.store = StateStore(Path(settings.state_dir) / "ota" / "state.json")
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------ decisions
    def settle(self) -> m.Record:
        """Before a start: discard half-written releases, roll back a failed trial, count
        a start of a release under trial."""
        rec = self.store.load()
        self.slots.recover(rec.previous)
        now = time.time()
        decision = m.on_boot(
            rec, self.slots.running(), now, self.ota.max_attempts, self.ota.max_trial_boots
        )
        if decision == m.BOOT_ROLLBACK:
            return self.rollback(rec, "not healthy in its trial")
        if decision == m.BOOT_TRIAL and rec.state == m.TRIAL:
            rec = dataclasses.replace(rec, trial_boots=rec.trial_boots + 1)
            self.store.save(rec)
        return rec

    def rollback(self, rec: m.Record, why: str) -> m.Record:
        if rec.previous is None or not self.slots.is_complete(rec.previous):
            log.error("trial failed (%s) but no complete previous release to go back to", why)
            return rec
        release = rec.desired.release if rec.desired else "?"
        detail = f"{e.UNHEALTHY}: {release} {why} (start {rec.trial_boots})"
        self.slots.switch(rec.previous)
        new = m.step(rec, "unhealthy", error=detail[:256], reported=None)
        self.store.save(new)
        log.warning("rolled back from %s to %s: %s", release, rec.previous, why)
        return new

    def rollback_due(self) -> bool:
        """Whether the next ``settle`` rolls back (then there is no reason to wait)."""
        rec = self.store.load()
        decision = m.on_boot(
            rec, self.slots.running(), time.time(), self.ota.max_attempts, self.ota.max_trial_boots
        )
        return decision == m.BOOT_ROLLBACK

    def trial_late(self) -> bool:
        rec = self.store.load()
        return (
            rec.state == m.TRIAL
            and rec.trial_deadline is not None
            and time.time() > rec.trial_deadline
        )

    # ------------------------------------------------------------ processes
    def spawn(self) -> subprocess.Popen[bytes]:
        release_dir = self.slots.current_path().resolve()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(release_dir)
        # systemd names the launcher in WATCHDOG_PID; the agent child is the one that pings
        # (the unit has NotifyAccess=all), so it must not think the watchdog is someone else's
        env.pop("WATCHDOG_PID", None)
        argv = [self.python, "-m", "agent.cli", "--config", str(self.config)]
        log.info("starting agent release %s", release_dir.name)
        self.starts += 1
        # the launcher runs no other thread, so preexec_fn is safe here
        return subprocess.Popen(
            argv,
            env=env,
            cwd=str(release_dir),
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )

    def end_child(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)

    def run(self) -> int:
        delay = _RESTART_MIN_S
        while not self.stop.is_set():
            try:
                self.settle()
                child = self.spawn()
            except (e.OtaError, OSError) as exc:
                log.error("cannot start the agent: %s", exc)
                if self.stop.wait(_RESTART_MAX_S):
                    break
                continue
            self.child = child
            began = time.monotonic()
            while child.poll() is None:
                if self.stop.wait(_POLL_S):
                    break
                if self.trial_late():
                    log.warning("trial deadline passed: stopping the release under trial")
                    self.end_child(child)
                    break
            self.end_child(child)
            log.info("agent exited with %s", child.returncode)
            if self.stop.is_set():
                break
            if self.rollback_due():
                continue  # back to the previous release at once
            if time.monotonic() - began < _QUICK_EXIT_S:
                delay = min(_RESTART_MAX_S, delay * 2)
            else:
                delay = _RESTART_MIN_S
            if self.stop.wait(delay if child.returncode else _RESTART_MIN_S):
                break
        return 0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the launcher dies (Linux), so a killed
    launcher never leaves an agent running on its own (systemd would kill the cgroup)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


def init_release(ota: OtaSettings, bundle: Path, release: str) -> None:
    """Install ``bundle`` as the first release and point ``current`` at it."""
    check_manifest(bundle, release)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    slots = AppSlots(ota.slots_dir)
    slots.install_bundle(bundle, release, sha, keep=KEPT_BUNDLE)
    slots.switch(release)


def _model_release(bundle: Path) -> str:
    """The release a model bundle (.tar.gz) names in its ``bundle.json``."""
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.rsplit("/", 1)[-1] == MODEL_MANIFEST:
                    f = tar.extractfile(member)
                    raw = f.read(_MANIFEST_MAX) if f is not None else b""
                    return str(json.loads(raw)["release"])
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise e.OtaError(
            e.BAD_BUNDLE, f"{bundle.name}: no readable {MODEL_MANIFEST}: {exc}"
        ) from exc
    raise e.OtaError(e.BAD_BUNDLE, f"{bundle.name} holds no {MODEL_MANIFEST}")


def init_model(ota: OtaSettings, bundle: Path, *, if_none: bool) -> str | None:
    """Install a model bundle (the .tar.gz an OTA model release serves, or a
    camfleet-model package holds) and make it the current model, without the accuracy
    gate: the first model of a box. With ``if_none``, a slot that has a model keeps it
    (models change through OTA releases and their gate). The release installed, or None."""
    if ota.model_slots_dir is None:
        raise e.OtaError(e.INSTALL, "the config has no [ota] model_slots_dir")
    slots = model_slots(ota.model_slots_dir)
    if if_none and slots.running() is not None:
        return None
    release = _model_release(bundle)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    installed = slots.install_bundle(bundle, release, sha)
    try:
        read_model_bundle(installed)  # every file against its hash, the card, the eval set
    except BundleError as exc:
        slots.remove(release)
        raise e.OtaError(e.BAD_BUNDLE, f"{bundle.name}: {exc}") from exc
    slots.switch(release)
    return release


PROG = "camfleet-agent-launch"
app = make_app(__doc__)
app.info.no_args_is_help = False  # with only --config it runs the launcher


def _settings(config: Path) -> tuple[AgentSettings, OtaSettings]:
    try:
        settings = load_settings(AgentSettings, config)
    except ConfigError as exc:
        fail(PROG, exc, EXIT_USAGE)
    if settings.ota is None:
        fail(PROG, "the config has no [ota] table", EXIT_USAGE)
    setup_logging(settings.log_level)
    return settings, settings.ota


ConfigOpt = Annotated[Path, typer.Option("--config", help="the agent's TOML config file")]


@app.callback(invoke_without_command=True)
def launch(ctx: typer.Context, config: ConfigOpt) -> None:
    """Start the agent from the release `current` names and keep it running; roll a
    release under trial back when it is not healthy in time. Exit codes: 0 after a clean
    stop, 1 failed, 2 wrong command line or config."""
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    settings, ota = _settings(config)
    launcher = Launcher(config, settings, ota)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        launcher.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    raise typer.Exit(launcher.run())


@app.command("init")
def init(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="the agent bundle (.tar.gz) to install")],
    release: Annotated[str, typer.Option(help="its release string, e.g. 1.0.0")],
) -> None:
    """Install a first (factory) release and make it current."""
    _, ota = _settings(ctx.obj)
    try:
        init_release(ota, bundle, release)
    except (e.OtaError, OSError) as exc:
        fail(PROG, f"init failed: {exc}")


@app.command("init-model")
def init_model_command(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="the model bundle (.tar.gz) to install")],
    if_none: Annotated[
        bool, typer.Option("--if-none", help="only when the box has no model yet")
    ] = False,
) -> None:
    """Install a first model into the model slot ([ota] model_slots_dir) and make it
    current (a camfleet-model package's postinst does this)."""
    _, ota = _settings(ctx.obj)
    try:
        release = init_model(ota, bundle, if_none=if_none)
    except (e.OtaError, OSError) as exc:
        fail(PROG, f"init-model failed: {exc}")
    print(f"model {release} installed" if release else "the box has a model already: kept")


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
