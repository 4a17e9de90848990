"""The agent's updater end to end: a real launcher and agent process, a real TLS Mosquitto,
a real TUF repository (fleet_server.ota) served over HTTPS with Range, real agent bundles of
this repository built by ``fleet_server.ota.release``.

Every agent runs from its release slot (PYTHONPATH=<slots>/releases/<release>), started by
``agent.ota.launch``; an update switches the slot and the launcher starts the new release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from agent.ota.launch import init_release
from agent.ota.settings import OtaSettings
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ota.release import add_agent_release, agent_target
from fleet_server.ota.tufrepo import TufRepo
from hil_tests.ota_rig import StaticHttps, launcher_process, source_copy
from hil_tests.procs import REPO, Broker, Process, free_port, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import server_creds

pytestmark = pytest.mark.slow


class Collector:
    """Everything a device publishes, decoded, as the fleet server would see it."""

    def __init__(self, ca: CertificateAuthority, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.port = port
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"ota-watch-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        cert, key = server_creds(ca)  # an identity of its own (issue 15)
        self.client.tls_set(ca_certs=str(ca.root_cert_path), certfile=str(cert), keyfile=str(key))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.connect("localhost", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(f"{contract.TOPIC_ROOT}/{device_id}/#", qos=1)
        assert ready.wait(5), "subscription not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        _id, kind, body = contract.decode(msg.topic, msg.payload)
        with self._lock:
            self.seen.append((kind, body))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [b for k, b in self.seen if k == kind]

    def states(self, campaign: str) -> list[dict[str, Any]]:
        return [b for b in self.of("update_state") if b["campaign"] == campaign]

    def wait(self, what: str, pred: Callable[[], bool], timeout: float = 60.0) -> None:
        try:
            wait_for(pred, timeout, interval=0.1, what=what)
        except Exception as exc:
            raise AssertionError(f"{exc}; update_state seen: {self.of('update_state')}") from exc

    def wait_state(self, campaign: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        self.wait(
            f"{campaign} {state}",
            lambda: any(b["state"] == state for b in self.states(campaign)),
            timeout,
        )
        return next(b for b in self.states(campaign) if b["state"] == state)

    def running(self) -> str | None:
        beats = self.of("heartbeat")
        return str(beats[-1]["versions"].get("agent")) if beats else None

    def beats_since(self, count: int) -> list[dict[str, Any]]:
        return self.of("heartbeat")[count:]

    def desire(self, campaign: str, release: str, **extra: object) -> None:
        body: dict[str, object] = {
            "campaign": campaign,
            "artifact": "agent",
            "release": release,
            "target": agent_target(release) if "target" not in extra else extra.pop("target"),
            **extra,
        }
        topic, payload, qos, retain = contract.encode(
            "update_desired", self.device_id, body, time.time()
        )
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def clear_desired(self) -> None:
        topic = contract.topic(self.device_id, "update_desired")
        self.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.clear_desired()
        self.client.disconnect()
        self.client.loop_stop()


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under a release directory."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class Source:
    """A TUF repository of agent releases and the HTTPS host serving it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "work"
        self.work.mkdir(parents=True)
        self.repo = TufRepo.create(tmp / "repo", tmp / "keys")
        self.base = ""
        self.static: StaticHttps | None = None
        self.server: ServerProcess | None = None

    def add(self, release: str, src: Path = REPO, delta_from: tuple[str, ...] = ()) -> None:
        add_agent_release(self.repo, src, release, self.work, delta_from=delta_from)
        self.repo.publish()

    def bundle(self, release: str) -> Path:
        return self.work / f"camfleet-agent-{release}.tar.gz"

    def serve_static(self, ca: CertificateAuthority) -> Source:
        self.static = StaticHttps(self.tmp / "repo", ca).start()
        self.base = self.static.base
        return self

    def serve_fleet_server(self, ca: CertificateAuthority, broker: Broker) -> Source:
        """The real fleet server process serving the repository on its OTA HTTPS port."""
        port = free_port()
        ota = {"enabled": True, "repo_dir": str(self.tmp / "repo"), "https_port": port}
        self.server = ServerProcess(
            self.tmp / "server",
            ca.dir,
            broker.port,
            client_id=f"fleet-ota-{uuid.uuid4().hex[:6]}",
            extra={"ota": ota},
        ).start_and_wait()
        self.base = f"https://localhost:{port}/ota"
        return self

    def close(self) -> None:
        if self.static is not None:
            self.static.stop()
        if self.server is not None:
            self.server.stop()


class Rig:
    """One device: its pinned root, slots, launcher and an observer of what it says."""

    def __init__(
        self,
        tmp: Path,
        ca: CertificateAuthority,
        broker: Broker,
        creds: DeviceCredentials,
        source: Source,
    ) -> None:
        self.tmp = tmp
        self.broker = broker
        self.creds = creds
        self.source = source
        self.trusted_root = tmp / "device" / "root.json"  # pinned at provisioning
        self.trusted_root.parent.mkdir(parents=True)
        shutil.copyfile(source.tmp / "repo" / "metadata" / "1.root.json", self.trusted_root)
        self.slots = tmp / "device" / "slots"
        self.state = tmp / "device" / "agent" / "state"
        self.watch = Collector(ca, broker.port, creds.device_id)
        self.launcher: Process | None = None

    @property
    def https(self) -> StaticHttps:
        assert self.source.static is not None
        return self.source.static

    def install_factory(self, release: str = "1.0.0") -> None:
        init_release(self.ota_model(), self.source.bundle(release), release)

    def ota(self, **extra: object) -> dict[str, object]:
        return {
            "metadata_url": f"{self.source.base}/metadata/",
            "targets_url": f"{self.source.base}/targets/",
            "trusted_root": str(self.trusted_root),
            "slots_dir": str(self.slots),
            "trial_s": 60,
            "trial_heartbeats": 2,
            "max_target_bytes": 4 * 1024 * 1024,
            **extra,
        }

    def ota_model(self) -> OtaSettings:
        return OtaSettings.model_validate(self.ota())

    def start(self, env: dict[str, str] | None = None, **ota_extra: object) -> Process:
        self.launcher = launcher_process(
            self.creds,
            self.broker.port,
            self.tmp / "device" / "agent",
            self.ota(**ota_extra),
            env=env,
        ).start()
        return self.launcher

    def current(self) -> str:
        return os.readlink(self.slots / "current")

    def current_digest(self) -> dict[str, str]:
        return tree_digest((self.slots / "current").resolve())

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "ota" / "state.json").read_text())
        return data

    def wait_running(self, release: str, timeout: float = 60.0) -> None:
        self.watch.wait(
            f"heartbeat from {release}", lambda: self.watch.running() == release, timeout
        )

    def log(self) -> str:
        return self.launcher.log_text() if self.launcher else ""

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.stop(grace=20)
        self.watch.close()


@pytest.fixture(scope="module")
def fleet_source(
    tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority, broker: Broker
) -> Iterator[Source]:
    """Releases on the real fleet server's /ota/: 1.0.0, 1.1.0 (with a delta from 1.0.0),
    1.2.0 (full only), and 2.0.0 / 2.0.1 whose agent exits at start / hangs."""
    tmp = tmp_path_factory.mktemp("ota-fleet")
    source = Source(tmp)
    source.add("1.0.0")
    source.add("1.1.0", delta_from=("1.0.0",))
    source.add("1.2.0")
    source.add("2.0.0", src=source_copy(tmp / "src-exits", broken="exits"))
    source.add("2.0.1", src=source_copy(tmp / "src-hangs", broken="hangs"))
    source.serve_fleet_server(ca, broker)
    yield source
    source.close()


@pytest.fixture
def static_source(tmp_path: Path, ca: CertificateAuthority) -> Iterator[Source]:
    """A repository of its own (a test may spoil it) on a static HTTPS host that can drop
    the link or stream without end."""
    source = Source(tmp_path / "static")
    source.add("1.0.0")
    source.serve_static(ca)
    yield source
    source.close()


@pytest.fixture
def rig_factory(
    tmp_path: Path,
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Callable[[str], DeviceCredentials],
) -> Iterator[Callable[[str, Source], Rig]]:
    made: list[Rig] = []

    def make(name: str, source: Source) -> Rig:
        creds = device_factory(f"ota-{name}-{uuid.uuid4().hex[:6]}")
        rig = Rig(tmp_path / name, ca, broker, creds, source)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


RigFactory = Callable[[str, Source], Rig]


def _states(rig: Rig, campaign: str) -> list[str]:
    return [b["state"] for b in rig.watch.states(campaign)]


def test_happy_path_delta_trial_commit(rig_factory: RigFactory, fleet_source: Source) -> None:
    """From the fleet server's /ota/: a delta from the running release, trial, commit."""
    rig = rig_factory("happy", fleet_source)
    rig.install_factory("1.0.0")
    rig.start()
    rig.wait_running("1.0.0")
    rig.watch.desire("c-happy", "1.1.0", trial_s=60)
    done = rig.watch.wait_state("c-happy", "committed", timeout=90)
    states = _states(rig, "c-happy")
    # the order the contract promises, with progress while downloading
    firsts = [states.index(s) for s in ("downloading", "installing", "trial", "committed")]
    assert firsts == sorted(firsts), states
    assert any("progress" in b for b in rig.watch.states("c-happy") if b["state"] == "downloading")
    assert done["running"] == "1.1.0" and done["release"] == "1.1.0"
    rig.wait_running("1.1.0")
    assert rig.current() == "releases/1.1.0"
    assert "downloaded (delta)" in rig.log()  # the delta, not the full bundle
    assert rig.record()["state"] == "committed"
    # the same desired again (a reconnect redelivers it): committed again, nothing installed
    before = len(rig.watch.states("c-happy"))
    rig.watch.desire("c-happy", "1.1.0", trial_s=60)
    rig.watch.wait(
        "second committed",
        lambda: [b["state"] for b in rig.watch.states("c-happy")[before:]] == ["committed"],
        30,
    )
    assert rig.current() == "releases/1.1.0"


@pytest.mark.parametrize("point", ["download", "verify", "write", "switch", "trial"])
def test_kill_9_at_every_install_state(
    rig_factory: RigFactory, fleet_source: Source, point: str
) -> None:
    """The agent SIGKILLs itself once at ``point`` (test hook); the launcher starts it again
    as systemd would. It ends on a complete, consistent release, reports it, and nothing
    half-written is left."""
    rig = rig_factory(f"kill-{point}", fleet_source)
    rig.install_factory("1.0.0")
    marker = rig.tmp / f"crashed-{point}"
    rig.start(env={"CAMFLEET_OTA_CRASH_AT": f"{point}:{marker}"})
    rig.wait_running("1.0.0")
    rig.watch.desire(f"c-kill-{point}", "1.2.0")  # a full bundle (no delta to 1.2.0)
    done = rig.watch.wait_state(f"c-kill-{point}", "committed", timeout=120)
    assert marker.read_text() == point  # it really was killed there
    assert "SIGKILL at " + point in rig.log()
    assert done["running"] == "1.2.0"
    rig.wait_running("1.2.0")
    assert rig.current() == "releases/1.2.0"
    releases = sorted(p.name for p in (rig.slots / "releases").iterdir())
    assert releases == ["1.0.0", "1.2.0"]  # no .tmp- unpack left, the previous one kept
    for release in releases:
        assert (rig.slots / "releases" / release / ".release").is_file()
    # the installed tree is exactly the signed bundle's content
    manifest = json.loads((rig.slots / "releases" / "1.2.0" / "MANIFEST.json").read_text())
    digest = rig.current_digest()
    for name, sha in manifest["files"].items():
        assert digest[name] == sha, name
    assert manifest["release"] == "1.2.0"
    leftovers = list((rig.state / "ota" / "download").glob("*"))
    assert leftovers == []
    if point in ("download", "verify", "write"):
        assert done["attempt"] == 2  # the crash counted as an attempt (loop guard)
    if point == "write":
        assert "discarded half-written releases" in rig.log()
    if point == "download":
        assert "resuming agent/camfleet-agent-1.2.0.tar.gz from byte " in rig.log()


def test_interrupted_download_resumes_where_it_stopped(
    rig_factory: RigFactory, static_source: Source
) -> None:
    static_source.add("1.1.0")  # no delta: the full bundle, 160 kB
    rig = rig_factory("resume", static_source)
    rig.install_factory("1.0.0")
    rig.https.drop_after["camfleet-agent-1.1.0.tar.gz"] = 50_000  # the link drops once
    rig.start()
    rig.wait_running("1.0.0")
    rig.watch.desire("c-resume", "1.1.0")
    rig.watch.wait_state("c-resume", "committed", timeout=90)
    ranges = rig.https.ranges_for("camfleet-agent-1.1.0.tar.gz")
    assert ranges == [None, "bytes=50000-"]
    assert "dropped at 50000 bytes" in rig.log()
    rig.wait_running("1.1.0")


def _latest_targets(rig: Rig) -> Path:
    md = rig.source.tmp / "repo" / "metadata"
    return max(md.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))


def _target_file(rig: Rig, release: str) -> Path:
    entry = rig.source.repo.target_info(agent_target(release))
    assert entry is not None
    return rig.source.repo.local_target(agent_target(release))


def _release(rig: Rig, release: str) -> None:
    add_agent_release(rig.source.repo, REPO, release, rig.source.work)
    rig.source.repo.publish()


def _corrupt(rig: Rig) -> str:
    _release(rig, "1.2.0")
    f = _target_file(rig, "1.2.0")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return "1.2.0"


def _truncated(rig: Rig) -> str:
    _release(rig, "1.3.0")
    f = _target_file(rig, "1.3.0")
    f.write_bytes(f.read_bytes()[:1000])
    return "1.3.0"


def _resign_targets(rig: Rig, signer: CryptoSigner | None) -> None:
    path = _latest_targets(rig)
    md = Metadata.from_file(str(path))
    md.signatures.clear()
    if signer is not None:
        md.sign(signer)
    md.to_file(str(path), JSONSerializer())


def _unsigned(rig: Rig) -> str:
    _release(rig, "1.4.0")
    _resign_targets(rig, None)
    return "1.4.0"


def _wrongly_signed(rig: Rig) -> str:
    _release(rig, "1.5.0")
    _resign_targets(rig, CryptoSigner.generate_ed25519())  # a key the root does not list
    return "1.5.0"


def _expired(rig: Rig) -> str:
    _release(rig, "1.6.0")
    past = datetime.now(UTC) - timedelta(days=3)
    src = rig.source.tmp
    TufRepo(src / "repo", src / "keys", clock=lambda: past).refresh_timestamp()
    return "1.6.0"


def _oversized(rig: Rig) -> str:
    big = rig.source.work / "big.tar.gz"
    big.write_bytes(os.urandom(5 * 1024 * 1024))  # signed as 5 MiB; the device takes 4 MiB
    custom = {"camfleet": {"artifact": "agent", "release": "1.7.0"}}
    rig.source.repo.add_target(agent_target("1.7.0"), big, custom)
    rig.source.repo.publish()
    return "1.7.0"


def _endless(rig: Rig) -> str:
    _release(rig, "1.8.0")
    rig.https.endless.add("camfleet-agent-1.8.0.tar.gz")  # bytes without end, no length
    return "1.8.0"


REFUSALS: list[tuple[str, Callable[[Rig], str], str]] = [
    ("corrupt", _corrupt, "bad_hash"),
    ("truncated", _truncated, "bad_hash"),
    ("unsigned", _unsigned, "bad_signature"),
    ("wrongly-signed", _wrongly_signed, "bad_signature"),
    ("expired", _expired, "expired"),
    ("oversized", _oversized, "too_large"),
    ("endless", _endless, "too_large"),
]


def test_bad_updates_are_refused_and_the_running_slot_is_untouched(
    rig_factory: RigFactory, static_source: Source
) -> None:
    rig = rig_factory("refuse", static_source)
    rig.install_factory("1.0.0")
    rig.start()
    rig.wait_running("1.0.0")
    link, digest = rig.current(), rig.current_digest()
    for name, spoil, reason in REFUSALS:
        release = spoil(rig)
        campaign = f"c-{name}"
        rig.watch.desire(campaign, release)
        failed = rig.watch.wait_state(campaign, "failed", timeout=60)
        assert failed["error"].startswith(f"{reason}: "), (name, failed)
        assert failed["running"] == "1.0.0", name
        assert "committed" not in _states(rig, campaign), name
        assert rig.current() == link and rig.current_digest() == digest, name
        assert not (rig.slots / "releases" / release).exists(), name
        assert list((rig.state / "ota" / "download").glob("*")) == [], name
        rig.source.repo.refresh_timestamp()  # a valid timestamp again for the next case
    # downgrade: refused before anything is fetched
    rig.watch.desire("c-downgrade", "0.9.0")
    failed = rig.watch.wait_state("c-downgrade", "failed", timeout=30)
    assert failed["error"].startswith("downgrade: "), failed
    # the endless stream was cut at the signed length: the client hung up at once
    endless = "camfleet-agent-1.8.0.tar.gz"
    rig.watch.wait(
        "the endless stream to end",
        lambda: any(p.endswith(endless) for p in rig.https.served_bytes),
        30,
    )
    sent = [n for p, n in rig.https.served_bytes.items() if p.endswith(endless)]
    assert 0 < max(sent) < 16 * 1024 * 1024, sent
    # still the same agent, healthy
    count = len(rig.watch.of("heartbeat"))
    rig.watch.wait("heartbeats go on", lambda: len(rig.watch.beats_since(count)) >= 2, 30)
    assert rig.watch.running() == "1.0.0"
    assert rig.current() == link and rig.current_digest() == digest


@pytest.mark.parametrize("broken", ["exits", "hangs"])
def test_unhealthy_release_rolls_back_by_itself(
    rig_factory: RigFactory, fleet_source: Source, broken: str
) -> None:
    rig = rig_factory(f"unhealthy-{broken}", fleet_source)
    release = {"exits": "2.0.0", "hangs": "2.0.1"}[broken]
    rig.install_factory("1.0.0")
    rig.start(max_trial_boots=2)  # a release that crashes at start: 2 starts, then back
    rig.wait_running("1.0.0")
    link, digest = rig.current(), rig.current_digest()
    trial_s = 10
    sent = time.monotonic()
    rig.watch.desire(f"c-{broken}", release, trial_s=trial_s)
    rig.watch.wait(
        f"the switch to {release}", lambda: rig.current() == f"releases/{release}", timeout=60
    )
    switched = time.monotonic()
    back = rig.watch.wait_state(f"c-{broken}", "rolled_back", timeout=90)
    assert back["error"].startswith("unhealthy: "), back
    assert back["running"] == "1.0.0"
    assert rig.current() == link and rig.current_digest() == digest
    rig.wait_running("1.0.0")
    # within the deadline: the launcher acts by itself at trial_s at the latest (plus the
    # old release's start and connect to say so)
    rolled = time.monotonic()
    assert rolled - switched < trial_s + 30, (rolled - switched, rolled - sent)
    if broken == "exits":
        assert "broken on purpose" in rig.log()
    assert rig.record()["state"] == "rolled_back"
    # the same desired again (retained, redelivered): not tried a second time
    before = len(rig.watch.states(f"c-{broken}"))
    rig.watch.desire(f"c-{broken}", release, trial_s=trial_s)
    rig.watch.wait(
        "rolled_back said again",
        lambda: [b["state"] for b in rig.watch.states(f"c-{broken}")[before:]] == ["rolled_back"],
        30,
    )
    assert rig.current() == link


@pytest.mark.parametrize("point", ["write", "switch"])
def test_power_cut_of_launcher_and_agent(
    rig_factory: RigFactory, fleet_source: Source, point: str
) -> None:
    """The whole process group (launcher and agent) is SIGKILLed at ``point``; after the
    "power" comes back (a new launcher), the box ends on a complete release."""
    rig = rig_factory(f"power-{point}", fleet_source)
    rig.install_factory("1.0.0")
    marker = rig.tmp / f"cut-{point}"
    env = {"CAMFLEET_OTA_CRASH_AT": f"{point}:{marker}", "CAMFLEET_OTA_POWER_CUT": "1"}
    first = rig.start(env=env)
    rig.wait_running("1.0.0")
    rig.watch.desire(f"c-power-{point}", "1.2.0")
    wait_for(lambda: not first.alive(), 60, what="the power cut")
    assert marker.read_text() == point
    first.stop()
    if point == "write":  # what the cut left: an unpack without its marker
        assert [p.name for p in (rig.slots / "releases").glob(".tmp-*")]
    rig.start(env=env)  # power back: the marker makes the hook fire only once
    done = rig.watch.wait_state(f"c-power-{point}", "committed", timeout=120)
    assert done["running"] == "1.2.0"
    rig.wait_running("1.2.0")
    assert sorted(p.name for p in (rig.slots / "releases").iterdir()) == ["1.0.0", "1.2.0"]
    assert rig.current() == "releases/1.2.0"
