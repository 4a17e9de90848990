"""The node's own update, end to end: a real node (unix-port MicroPython, .mpy, 128 KiB
heap) on the real TLS Mosquitto gets update_desired (retained), fetches signed TUF
targets metadata and its firmware bundle over HTTPS from the fleet server's /ota/ route
(fleet_server.ota.serve on the fleet server's TLS listener, the repository made by
fleet_server.ota.tufrepo), through a relay that cuts the first long transfer once, so the
bundle arrives by a Range resume; installs into slot "a", resets, runs the new release on
trial, commits after healthy heartbeats and reports it. A release that crashes on trial
rolls back after its boot attempts; a bundle whose bytes do not match the signed hash is
refused with nothing written to the slot."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.identity.est import EstListener
from fleet_server.ota.serve import OtaCounters, ota_app
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, free_port
from tests import node_helpers as nh
from tests import ota_helpers
from tests.mqtt_helpers import Client

FACTORY = "0.2.0"  # firmware/version.py: what the rig's app tree runs
pytestmark = pytest.mark.slow


class Ota:
    """A TUF repository served by the fleet server's /ota/ app over HTTPS, behind a relay
    that cuts one long transfer."""

    def __init__(self, ca: CertificateAuthority, root: Path, cut_after: int) -> None:
        self.repo = ota_helpers.make_repo(root)
        self.counters = OtaCounters(CollectorRegistry())
        port = free_port()
        self.listener = EstListener(
            ota_app(self.repo.repo_dir, self.counters, False), ca, "127.0.0.1", port, ["localhost"]
        )
        self.listener.start()
        self.relay = ota_helpers.CuttingRelay(port, cut_after).start()
        self.url = f"https://localhost:{self.relay.port}/ota"

    def node_extra(self) -> dict[str, object]:
        keys, threshold = ota_helpers.pinned_keys(self.repo)
        return {
            "ota_url": self.url,
            "ota_keys": keys,
            "ota_threshold": threshold,
            "ota_commit_heartbeats": 2,
            "ota_attempts": 2,
        }

    def served(self, outcome: str) -> float:
        return self.counters.requests.labels(outcome=outcome)._value.get()

    def close(self) -> None:
        self.relay.stop()
        self.listener.stop()


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    yield from nh.started_nodes()


@contextmanager
def _rig(
    ca: CertificateAuthority, broker: Broker, tmp: Path, dev: str, cut_after: int
) -> Iterator[tuple[Ota, Client]]:
    """The OTA server and an observer of ``dev``; the retained request cleared at the end."""
    ota = Ota(ca, tmp / "ota", cut_after)
    try:
        obs = nh.observer(ca, broker.port, dev)
        try:
            yield ota, obs
        finally:
            _clear(obs, dev)
            obs.close()
    finally:
        ota.close()


def _desire(
    obs: Client, device_id: str, campaign: str, release: str, target: str, **extra: object
) -> None:
    body = {"campaign": campaign, "artifact": "firmware", "release": release, "target": target}
    body.update(extra)
    topic, data, _q, retain = contract.encode("update_desired", device_id, body, time.time())
    obs.publish(topic, data, retain=retain)


def _clear(obs: Client, device_id: str) -> None:
    obs.publish(contract.topic(device_id, "update_desired"), b"", retain=True)


def _state(
    obs: Client, dev: str, node: NodeProcess, pred: Callable[[dict[str, Any]], bool], t: float
) -> dict[str, Any]:
    return nh.wait_body(obs, dev, "update_state", pred, node, t)


def _next_heartbeat(obs: Client, dev: str, node: NodeProcess) -> dict[str, Any]:
    """A heartbeat sent after this call."""
    seen = len(nh.bodies(obs, dev, "heartbeat"))
    nh.wait_body(
        obs, dev, "heartbeat", lambda b: len(nh.bodies(obs, dev, "heartbeat")) > seen, node, 30
    )
    return nh.bodies(obs, dev, "heartbeat")[-1]


def _start_node(
    creds: DeviceCredentials,
    broker: Broker,
    tmp: Path,
    ota: Ota,
    started: list[NodeProcess],
    obs: Client,
    **settings: object,
) -> NodeProcess:
    """The node with ``ota``'s settings (and ``settings`` over them), up to its first
    heartbeat."""
    extra = ota.node_extra()
    extra.update(settings)
    node = node_process(creds, broker.port, tmp / "node", heartbeat_s=1, extra=extra)
    nh.start(started, node)
    nh.wait_body(obs, creds.device_id, "heartbeat", lambda b: True, node, 30)
    return node


def _answered_again(obs: Client, dev: str, node: NodeProcess, state: str) -> None:
    """Restarted (a reconnect), the node answers the retained request with ``state`` once
    more and redoes nothing."""
    before = len(nh.bodies(obs, dev, "update_state"))
    node.stop()
    node.start()

    def answered(_b: dict[str, Any]) -> bool:
        return any(b["state"] == state for b in nh.bodies(obs, dev, "update_state")[before:])

    _state(obs, dev, node, answered, 60)
    later = nh.bodies(obs, dev, "update_state")[before:]
    assert [b["state"] for b in later] == [state], later


def test_update_happy_path_with_resume(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-ota-1"
    creds = device_factory(dev)
    release = "0.3.0"
    fw = ota_helpers.bundle_of(ota_helpers.FIRMWARE, release, tmp_path / "fw.bundle")
    size = fw.stat().st_size
    with _rig(ca, broker, tmp_path, dev, cut_after=size // 2) as (ota, obs):
        target = ota_helpers.publish_firmware(ota.repo, fw, release)
        node = _start_node(creds, broker, tmp_path, ota, started, obs)
        _desire(obs, dev, "c-node-1", release, target)
        done = _state(obs, dev, node, lambda b: b["state"] == "committed", 120)
        assert done["release"] == release and done["running"] == release
        seen = [b["state"] for b in nh.bodies(obs, dev, "update_state")]
        for step in ("downloading", "installing", "trial", "committed"):
            assert step in seen, seen
        assert _next_heartbeat(obs, dev, node)["versions"]["firmware"] == release
        # the transfer was cut once and resumed with a Range request, not started over
        assert ota.relay.cuts == 1
        assert ota.served("partial") >= 1
        assert "download resumes at byte" in node.log_text()
        slots = json.loads((tmp_path / "node" / "app" / "slots.json").read_text())
        assert slots["good"] == "a" and slots["trial"] is None
        assert node.resets == ["soft", "soft"]  # into the install boot, out of it
        # delivered again (a reconnect): answered "committed", nothing redone
        _answered_again(obs, dev, node, "committed")
        nh.no_memory_errors(node)


def _broken_source(tmp: Path, patch: str) -> Path:
    """A copy of the firmware source with ``patch`` appended to node.py."""
    src = tmp / "broken-src"
    shutil.copytree(ota_helpers.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    node_py = src / "node.py"
    node_py.write_text(node_py.read_text() + "\n\n" + patch + "\n")
    return src


_MAIN_RAISES = """
def main(config_path: str, app_root: str = "") -> int:  # noqa: F811
    raise RuntimeError("this release is broken")
"""
_NEVER_CONNECTS = """
def _no_connect(self: Node) -> None:
    raise mqtt.NetworkError("this release never connects")


Node.connect = _no_connect  # type: ignore[method-assign]
"""


@pytest.mark.parametrize("patch", [_MAIN_RAISES, _NEVER_CONNECTS], ids=["crash", "no_link"])
def test_unhealthy_release_rolls_back(
    patch: str,
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-ota-2"
    creds = device_factory(dev)
    release = "0.4.0"
    fw = ota_helpers.bundle_of(_broken_source(tmp_path, patch), release, tmp_path / "fw.bundle")
    with _rig(ca, broker, tmp_path, dev, cut_after=1 << 30) as (ota, obs):
        target = ota_helpers.publish_firmware(ota.repo, fw, release)
        node = _start_node(creds, broker, tmp_path, ota, started, obs)
        _desire(obs, dev, "c-bad", release, target, trial_s=5)
        back = _state(obs, dev, node, lambda b: b["state"] == "rolled_back", 120)
        assert back["release"] == release and back["running"] == FACTORY
        assert back["error"].startswith("unhealthy: 2 boots without a commit"), back
        states = [b["state"] for b in nh.bodies(obs, dev, "update_state")]
        assert "committed" not in states, states
        log = node.log_text()
        if patch is _MAIN_RAISES:  # main.py reset the board after each crash on trial
            assert log.count("E main: install boot or application on trial failed") == 2
            assert "Traceback" not in log, log[-3000:]
        else:  # it ran, never connected, and was reset at its trial deadline
            assert log.count("release on trial not committed in 5000 ms: reset") == 2
        assert _next_heartbeat(obs, dev, node)["versions"]["firmware"] == FACTORY
        slots = json.loads((tmp_path / "node" / "app" / "slots.json").read_text())
        assert slots["good"] == "factory" and slots["trial"] is None, slots
        # the retained request is answered again on the next connect, not retried
        boots = node.boots
        _answered_again(obs, dev, node, "rolled_back")
        assert node.boots == boots + 1


def test_refused_updates_leave_the_slots_untouched(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-ota-3"
    creds = device_factory(dev)
    with _rig(ca, broker, tmp_path, dev, cut_after=1 << 30) as (ota, obs):
        # a good bundle whose served bytes are then swapped (same length, other content)
        fw = ota_helpers.bundle_of(ota_helpers.FIRMWARE, "0.6.0", tmp_path / "fw.bundle")
        swapped = ota_helpers.publish_firmware(ota.repo, fw, "0.6.0")
        served = ota.repo.local_target(swapped)
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
        # a bundle over the node's size limit (ota_max_kb 64)
        fat = ota_helpers.fat_bundle(tmp_path / "fat", "0.7.0", 80 * 1024)
        too_big = ota_helpers.publish_firmware(ota.repo, fat, "0.7.0")
        node = _start_node(creds, broker, tmp_path, ota, started, obs, ota_max_kb=64)
        cases = [
            ("c-down", "0.1.0", "firmware/camfleet-node-0.1.0.bundle", "downgrade: "),
            ("c-hash", "0.6.0", swapped, "bad_hash: "),
            ("c-big", "0.7.0", too_big, "too_large: "),
            ("c-none", "0.8.0", "firmware/camfleet-node-0.8.0.bundle", "no_target: "),
        ]
        for campaign, release, target, reason in cases:
            _desire(obs, dev, campaign, release, target)
            failed = _state(
                obs,
                dev,
                node,
                lambda b, c=campaign: b["campaign"] == c and b["state"] == "failed",
                60,
            )
            assert failed["error"].startswith(reason), failed
            assert failed["running"] == FACTORY
        app = tmp_path / "node" / "app"
        assert not (app / "a").exists() and not (app / "b").exists()
        assert not (app / "slots.json").exists()
        assert not list((tmp_path / "node" / "state").glob("*.part"))  # nothing kept
        assert node.resets == ["soft"] * 6  # three install boots: in and out of each
        assert _next_heartbeat(obs, dev, node)["versions"]["firmware"] == FACTORY
        nh.no_memory_errors(node)
