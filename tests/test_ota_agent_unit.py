"""The updater's parts without processes: the state machine's table and decisions, the
state file, release slots on a real file system with real bundles, the delta apply against
the server's delta maker, the RAUC backend against a stand-in ``rauc`` on PATH, the
launcher's rollback decision, and the updater's refusals through the fake backend."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from agent.ota import machine as m
from agent.ota.backend import FakeBackend, make_backend
from agent.ota.delta import apply_delta
from agent.ota.errors import OtaError, SlotError
from agent.ota.install import check_manifest
from agent.ota.launch import Launcher
from agent.ota.rauc import RaucBackend
from agent.ota.settings import OtaSettings
from agent.ota.slots import AppSlots
from agent.ota.store import StateStore
from agent.ota.updater import Updater
from fleet_server.ota.release import build_agent_bundle, make_delta
from fleet_server.ota.tufrepo import TufRepo
from hil_tests.procs import REPO

DESIRED = m.Desired("c-1", "agent", "1.1.0", "agent/camfleet-agent-1.1.0.tar.gz")


# ---------------------------------------------------------------- machine
def test_transition_table_happy_path_and_refusals() -> None:
    rec = m.Record()
    for event, want in [
        ("desired", m.DOWNLOADING),
        ("downloaded", m.VERIFYING),
        ("verified", m.INSTALLING),
        ("installed", m.SWITCHING),
        ("switched", m.TRIAL),
        ("healthy", m.COMMITTED),
    ]:
        rec = m.step(rec, event)
        assert rec.state == want
    with pytest.raises(m.TransitionError):
        m.step(rec, "switched")  # committed takes only a new desired
    for busy in m.BUSY:
        assert m.step(m.Record(state=busy), "error").state == m.FAILED
    with pytest.raises(m.TransitionError):
        m.step(m.Record(state=m.TRIAL), "error")  # a trial ends healthy or rolled back
    # every state says something on the wire except idle
    assert set(m.WIRE_STATE) == set(m.STATES) - {m.IDLE}
    assert set(m.WIRE_STATE.values()) <= {
        "downloading",
        "installing",
        "trial",
        "committed",
        "rolled_back",
        "failed",
    }


def test_on_desired_counts_attempts_and_guards_loops() -> None:
    rec = m.Record()
    action, rec = m.on_desired(rec, DESIRED, "1.0.0", max_attempts=2)
    assert action == m.ACT_INSTALL and rec.state == m.DOWNLOADING and rec.attempt() == 1
    assert rec.previous == "1.0.0"
    # the same desired while busy: said again, not started twice
    assert m.on_desired(rec, DESIRED, "1.0.0", 2)[0] == m.ACT_REPORT
    other = dataclasses.replace(DESIRED, release="1.2.0", target="x")
    assert m.on_desired(rec, other, "1.0.0", 2)[0] == m.ACT_BUSY
    failed = m.step(rec, "error", error="download: x")
    action, again = m.on_desired(failed, DESIRED, "1.0.0", 2)
    assert action == m.ACT_INSTALL and again.attempt() == 2
    spent = m.step(again, "error", error="download: x")
    assert m.on_desired(spent, DESIRED, "1.0.0", 2)[0] == m.ACT_REFUSE_LOOP
    # a new campaign for the same release starts a new count
    fresh = dataclasses.replace(DESIRED, campaign="c-2")
    action, rec2 = m.on_desired(spent, fresh, "1.0.0", 2)
    assert action == m.ACT_INSTALL and rec2.attempt() == 1
    # already running: answer, do nothing
    assert m.on_desired(m.Record(), DESIRED, "1.1.0", 2)[0] == m.ACT_REPORT


@pytest.mark.parametrize(
    ("state", "current", "deadline", "boots", "attempts", "want"),
    [
        (m.IDLE, "1.0.0", None, 0, 0, m.BOOT_NOTHING),
        (m.COMMITTED, "1.1.0", None, 0, 1, m.BOOT_NOTHING),
        (m.DOWNLOADING, "1.0.0", None, 0, 1, m.BOOT_RESUME_INSTALL),
        (m.VERIFYING, "1.0.0", None, 0, 1, m.BOOT_RESUME_INSTALL),
        (m.INSTALLING, "1.0.0", None, 0, 3, m.BOOT_NOTHING),  # loop guard: 3 of 3 used
        (m.SWITCHING, "1.0.0", None, 0, 1, m.BOOT_REDO_SWITCH),
        (m.SWITCHING, "1.1.0", None, 0, 1, m.BOOT_TRIAL),
        (m.TRIAL, "1.1.0", 2000.0, 1, 1, m.BOOT_TRIAL),
        (m.TRIAL, "1.1.0", 500.0, 1, 1, m.BOOT_ROLLBACK),  # deadline passed
        (m.TRIAL, "1.1.0", 2000.0, 3, 1, m.BOOT_ROLLBACK),  # crashed too often
        (m.TRIAL, "1.0.0", 2000.0, 0, 1, m.BOOT_ROLLBACK),  # current is not the new one
    ],
)
def test_boot_decisions(
    state: str, current: str, deadline: float | None, boots: int, attempts: int, want: str
) -> None:
    rec = m.Record(
        state=state,
        desired=DESIRED,
        previous="1.0.0",
        attempts={DESIRED.key(): attempts},
        trial_deadline=deadline,
        trial_boots=boots,
    )
    assert m.on_boot(rec, current, now=1000.0, max_attempts=3, max_trial_boots=3) == want


def test_release_order() -> None:
    assert m.is_downgrade("1.10.0", "1.9.9")
    assert not m.is_downgrade("1.9.9", "1.10.0")
    assert not m.is_downgrade(None, "0.1")
    with pytest.raises(ValueError, match="dot-separated"):
        m.release_key("1.0-rc1")


# ---------------------------------------------------------------- store
def test_state_file_round_trip_and_unreadable(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "ota" / "state.json")
    assert store.load() == m.Record()
    rec = m.Record(
        state=m.TRIAL, desired=DESIRED, previous="1.0.0", attempts={"k": 2}, trial_deadline=5.0
    )
    store.save(rec)
    assert store.load() == rec
    assert not list((tmp_path / "ota").glob("*.tmp"))
    store.path.write_text("{not json")
    assert store.load() == m.Record()
    assert (tmp_path / "ota" / "state.json.bad").read_text() == "{not json"


# ---------------------------------------------------------------- slots
@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {
        r: build_agent_bundle(REPO, r, out / f"camfleet-agent-{r}.tar.gz")
        for r in ("1.0.0", "1.1.0")
    }


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_slots_install_switch_and_recover(tmp_path: Path, bundles: dict[str, Path]) -> None:
    slots = AppSlots(tmp_path / "slots")
    with pytest.raises(SlotError):
        slots.switch("1.0.0")  # nothing installed
    slots.install_bundle(bundles["1.0.0"], "1.0.0", _sha(bundles["1.0.0"]), keep=".bundle")
    slots.switch("1.0.0")
    assert slots.running() == "1.0.0"
    assert (slots.current_path() / "agent" / "ota" / "slots.py").is_file()
    assert _sha(slots.current_path() / ".bundle") == _sha(bundles["1.0.0"])
    before = sorted(p.name for p in slots.current_path().rglob("*"))

    def crash() -> None:
        raise KeyboardInterrupt  # stands for a power cut between unpack and marker

    with pytest.raises(KeyboardInterrupt):
        slots.install_bundle(bundles["1.1.0"], "1.1.0", _sha(bundles["1.1.0"]), midway=crash)
    assert not slots.is_complete("1.1.0")
    # what a real power cut leaves: an unpack without marker, a release dir without one
    (slots.releases / ".tmp-1.1.0-99" / "agent").mkdir(parents=True)
    (slots.releases / "1.2.0" / "agent").mkdir(parents=True)
    removed = slots.recover()
    assert sorted(removed) == [".tmp-1.1.0-99", "1.2.0"]
    assert slots.installed() == ["1.0.0"] and slots.running() == "1.0.0"
    assert sorted(p.name for p in slots.current_path().rglob("*")) == before
    # the switch is a rename of a new link: current names one complete release at every step
    slots.install_bundle(bundles["1.1.0"], "1.1.0", _sha(bundles["1.1.0"]))
    slots.switch("1.1.0")
    assert os.readlink(slots.current) == "releases/1.1.0"
    # a current that names a missing release is pointed back at a complete one
    slots.switch("1.0.0")
    (slots.releases / "1.0.0" / ".release").unlink()
    slots.recover(fallback="1.1.0")
    assert slots.running() == "1.1.0"


def test_slots_refuse_a_bundle_that_escapes(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    slots = AppSlots(tmp_path / "slots")
    with pytest.raises(OtaError) as err:
        slots.install_bundle(evil, "6.6.6", _sha(evil))
    assert err.value.reason == "bad_bundle"
    assert not (tmp_path / "outside.txt").exists()
    assert slots.installed() == []
    assert list(slots.releases.iterdir()) == []  # the temp unpack is gone too
    with pytest.raises(SlotError):
        slots.release_dir("../x")


def test_manifest_check(tmp_path: Path, bundles: dict[str, Path]) -> None:
    check_manifest(bundles["1.1.0"], "1.1.0")
    with pytest.raises(OtaError, match=r"bundle says release 1\.1\.0"):
        check_manifest(bundles["1.1.0"], "1.2.0")


def test_delta_apply_matches_the_servers_delta(tmp_path: Path, bundles: dict[str, Path]) -> None:
    patch = make_delta(bundles["1.0.0"], bundles["1.1.0"], tmp_path / "d.bsdiff")
    out = apply_delta(bundles["1.0.0"], patch, tmp_path / "out.tar.gz")
    assert _sha(out) == _sha(bundles["1.1.0"])
    assert patch.stat().st_size < bundles["1.1.0"].stat().st_size / 10
    with pytest.raises(OtaError) as err:
        apply_delta(bundles["1.0.0"], bundles["1.1.0"], tmp_path / "bad.tar.gz")
    assert err.value.reason == "bad_bundle"


# ---------------------------------------------------------------- RAUC
_FAKE_RAUC = """#!/bin/sh
echo "$@" >> "$RAUC_LOG"
if [ "$1" = "status" ] && [ "$2" = "--output-format=json" ]; then
  cat "$RAUC_STATUS"; exit 0
fi
if [ "$1" = "install" ] && [ -n "$RAUC_FAIL_INSTALL" ]; then
  echo "signature verification failed" >&2; exit 1
fi
exit 0
"""


def test_rauc_backend_against_a_stand_in_rauc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a stand-in: no RAUC system here. It checks the commands and how their output
    and exit codes are read."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rauc = bin_dir / "rauc"
    rauc.write_text(_FAKE_RAUC)
    rauc.chmod(rauc.stat().st_mode | stat.S_IXUSR)
    status = {
        "compatible": "camfleet-pi",
        "booted": "A",
        "slots": [
            {"rootfs.0": {"state": "booted", "slot_status": {"bundle": {"version": "1.0.0"}}}},
            {"rootfs.1": {"state": "inactive", "slot_status": {"bundle": {"version": "0.9"}}}},
        ],
    }
    (tmp_path / "status.json").write_text(json.dumps(status))
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RAUC_LOG", str(log))
    monkeypatch.setenv("RAUC_STATUS", str(tmp_path / "status.json"))
    backend = make_backend("rauc", tmp_path)
    assert isinstance(backend, RaucBackend)
    assert backend.running() == "1.0.0"
    backend.install(tmp_path / "update.raucb", "1.1.0", "ab" * 32)
    backend.activate("1.1.0")
    backend.mark_good("1.1.0", "1.0.0")
    backend.rollback("1.0.0")
    calls = log.read_text().splitlines()
    assert calls == [
        "status --output-format=json",
        f"install {tmp_path / 'update.raucb'}",
        "status mark-good",
        "status mark-bad",
    ]
    monkeypatch.setenv("RAUC_FAIL_INSTALL", "1")
    with pytest.raises(OtaError, match="signature verification failed"):
        backend.install(tmp_path / "update.raucb", "1.1.0", "ab" * 32)


# ---------------------------------------------------------------- updater with the fake
def _settings(tmp_path: Path, **extra: object) -> OtaSettings:
    return OtaSettings.model_validate(
        {
            "metadata_url": "https://127.0.0.1:9/metadata/",
            "targets_url": "https://127.0.0.1:9/targets/",
            "trusted_root": str(tmp_path / "root.json"),
            "slots_dir": str(tmp_path / "slots"),
            "download_retries": 0,
            **extra,
        }
    )


class Sent:
    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, body: dict[str, object]) -> bool:
        assert kind == "update_state"
        with self.cond:
            self.bodies.append(body)
            self.cond.notify_all()
        return True

    def wait(self, state: str, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for b in self.bodies:
                    if b["state"] == state:
                        return b
                left = deadline - time.monotonic()
                assert left > 0, f"no {state} in {self.bodies}"
                self.cond.wait(left)


def test_updater_refusals_leave_the_backend_alone(tmp_path: Path) -> None:
    repo = TufRepo.create(tmp_path / "repo", tmp_path / "keys")
    (tmp_path / "root.json").write_bytes((repo.metadata_dir / "1.root.json").read_bytes())
    fake = FakeBackend("1.0.0")
    sent = Sent()
    restarts: list[int] = []
    up = Updater(
        _settings(tmp_path), tmp_path / "state", sent, lambda: restarts.append(1), backend=fake
    )
    up.start()
    assert up.versions() == {"agent": "1.0.0"}
    body = {"campaign": "c-0", "artifact": "agent", "release": "1.0.0", "target": "t"}
    up.handle_desired(body)
    assert sent.wait("committed")["running"] == "1.0.0"  # already there: said, nothing done
    up.handle_desired({**body, "campaign": "c-1", "release": "0.9.0"})
    failed = sent.wait("failed")
    assert str(failed["error"]).startswith("downgrade: ")
    up.handle_desired({**body, "campaign": "c-2", "release": "2.0.0", "artifact": "firmware"})
    deadline = time.monotonic() + 5
    while len([b for b in sent.bodies if b["state"] == "failed"]) < 2:
        assert time.monotonic() < deadline, sent.bodies
        time.sleep(0.02)
    # nothing reached the slots; no restart; the record says failed, persisted
    assert fake.calls == []
    assert fake.current == "1.0.0" and restarts == []
    assert StateStore(tmp_path / "state" / "ota" / "state.json").load().state == m.FAILED
    # an unreachable update server: a download error, still nothing touched
    up.handle_desired({**body, "campaign": "c-3", "release": "3.0.0"})
    deadline = time.monotonic() + 10
    while not any(b.get("campaign") == "c-3" and b["state"] == "failed" for b in sent.bodies):
        assert time.monotonic() < deadline, sent.bodies
        time.sleep(0.02)
    last = [b for b in sent.bodies if b.get("campaign") == "c-3"][-1]
    assert str(last["error"]).startswith("download: "), last
    assert fake.current == "1.0.0" and restarts == []


def test_launcher_rolls_back_a_late_trial(tmp_path: Path, bundles: dict[str, Path]) -> None:
    from agent.config import AgentSettings

    ota = _settings(tmp_path)
    slots = AppSlots(ota.slots_dir)
    for r in ("1.0.0", "1.1.0"):
        slots.install_bundle(bundles[r], r, _sha(bundles[r]))
    slots.switch("1.1.0")
    agent = AgentSettings.model_validate(
        {
            "device_id": "cam-ota-unit",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"ca": "/x", "cert": "/x", "key": "/x"},
            "ota": ota.model_dump(mode="json"),
        }
    )
    launcher = Launcher(tmp_path / "agent.toml", agent, ota)
    rec = m.Record(
        state=m.TRIAL,
        desired=DESIRED,
        previous="1.0.0",
        attempts={DESIRED.key(): 1},
        trial_deadline=time.time() + 60,
    )
    launcher.store.save(rec)
    assert launcher.settle().trial_boots == 1  # in time: a start counted, nothing else
    assert slots.running() == "1.1.0" and not launcher.trial_late()
    launcher.store.save(dataclasses.replace(rec, trial_deadline=time.time() - 1))
    assert launcher.trial_late()
    after = launcher.settle()
    assert after.state == m.ROLLED_BACK and str(after.error).startswith("unhealthy: ")
    assert slots.running() == "1.0.0"
    assert launcher.store.load() == after
