"""The MicroPython node: its logic under both interpreters (tests/mp/node_cases.py), then
the real node (unix port, 128 KiB heap) against the real TLS Mosquitto."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware import contract, version
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, wait_for
from tests.mp import harness, node_cases
from tests.mqtt_helpers import Client, server_creds

# node_cases loads the whole node plus a fake broker and its own checks: 192 KiB for
# those; the node itself runs in 128 KiB in the process tests below and in tests/test_node_*.
test_cpython, test_micropython_runs_every_case = harness.both_interpreters(
    node_cases, 18, heap="192k"
)


# ---------------------------------------------------------------- the real node


def _observer(ca: CertificateAuthority, port: int, device_id: str) -> Client:
    """A fleet-server identity that sees everything the device publishes."""
    obs = Client(port, ca.root_cert_path, *server_creds(ca))
    obs.subscribe(f"{contract.TOPIC_ROOT}/{device_id}/#")
    return obs


def _bodies(obs: Client, device_id: str, kind: str) -> list[dict[str, Any]]:
    topic = contract.topic(device_id, kind)
    return [contract.decode(topic, p)[2] for p in obs.received(topic)]


def _wait_body(
    obs: Client,
    device_id: str,
    kind: str,
    pred: Callable[[dict[str, Any]], bool],
    node: NodeProcess,
    timeout: float = 15,
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [b for b in _bodies(obs, device_id, kind) if pred(b)]
        return bool(found)

    try:
        wait_for(seen, timeout, what=f"{kind} of {device_id}")
    except Exception:
        print(node.log_text()[-3000:])
        raise
    return found[0]


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    """Nodes a test starts; killed at the end whatever happens."""
    nodes: list[NodeProcess] = []
    yield nodes
    for proc in nodes:
        proc.kill()


def _start(started: list[NodeProcess], proc: NodeProcess) -> NodeProcess:
    started.append(proc)
    proc.start()
    return proc


def test_node_online_heartbeats_and_commands(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0101"
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "temp_c").write_text("31.5")
    (sim / "rssi").write_text("-61")
    (sim / "reset_cause").write_text("wdt")
    obs = _observer(ca, broker.port, dev)
    try:
        node = _start(
            started,
            node_process(
                device_factory(dev), broker.port, tmp_path / "n", heartbeat_s=1, sim_dir=sim
            ),
        )
        online = _wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
        assert online["kind"] == "node"
        wait_for(lambda: len(obs.received(contract.topic(dev, "heartbeat"))) >= 3, 15, what="3 hb")
        beats = _bodies(obs, dev, "heartbeat")[:3]
        assert [b["seq"] for b in beats] == [0, 1, 2]
        for b in beats:
            assert b["kind"] == "node" and b["interval_s"] == 1
            assert isinstance(b["mem_free"], int) and 0 < b["mem_free"] < 128 * 1024
            assert (b["reset_cause"], b["rssi"], b["temp_c"]) == ("wdt", -61, 31.5)
            assert b["versions"]["firmware"] == version.VERSION
            assert b["versions"]["micropython"].startswith("1.")
            assert abs(b["ts"] - time.time()) < 30, "ts must be Unix time"
        gaps = [b2["ts"] - b1["ts"] for b1, b2 in itertools.pairwise(beats)]
        assert all(0.5 < g < 2.0 for g in gaps), gaps
        assert beats[0]["uptime_s"] < beats[1]["uptime_s"] < beats[2]["uptime_s"]
        assert not (sim / "reset_cause").exists(), "the sim consumes the reset cause at boot"

        # a late subscriber gets the retained online status
        late = Client(broker.port, ca.root_cert_path, *server_creds(ca))
        try:
            late.subscribe(contract.topic(dev, "status"))
            late.wait_for(contract.topic(dev, "status"), 1, timeout=5)
            first = late.messages[0]
            assert first.retain and json.loads(first.payload)["state"] == "online"
        finally:
            late.close()

        # commands reach the node; bad ones are refused without harm
        req = contract.topic(dev, "cmd_req")
        obs.publish(req, b'{"v": 1, "id": "node-0101", "ts": 1, "cid": 5}')
        good = contract.encode("cmd_req", dev, {"cid": "c-1", "cmd": "ping"}, time.time())
        obs.publish(good[0], good[1])
        pong = _wait_body(obs, dev, "cmd_res", lambda b: b["cid"] == "c-1", node)
        assert pong["ok"] is True and pong["result"]["pong"] is True
        assert "rejected message on " + req in node.log_text()
        assert [b["cid"] for b in _bodies(obs, dev, "cmd_res")] == ["c-1"]
        count = len(obs.received(contract.topic(dev, "heartbeat")))
        wait_for(
            lambda: len(obs.received(contract.topic(dev, "heartbeat"))) > count,
            10,
            what="heartbeats after commands",
        )
        assert node.alive()
        key_lines = [
            ln for ln in device_factory(dev).key_pem.read_text().splitlines() if "-----" not in ln
        ]
        assert not any(ln in node.log_text() for ln in key_lines), "key material in the log"
    finally:
        obs.close()


def test_clean_stop_says_offline(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0102"
    obs = _observer(ca, broker.port, dev)
    try:
        node = _start(started, node_process(device_factory(dev), broker.port, tmp_path))
        _wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
        code = node.stop()
        assert node.resets == [], f"the node reset before the stop: {node.log_text()[-2000:]}"
        assert code == 0, f"exit code {code}: {node.log_text()[-2000:]}"
        off = _wait_body(obs, dev, "status", lambda b: b["state"] == "offline", node, 5)
        assert off["reason"] == "stopped"
        assert "stopped" in node.log_text()
    finally:
        obs.close()


def test_kill_9_broker_publishes_will(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0103"
    obs = _observer(ca, broker.port, dev)
    try:
        node = _start(started, node_process(device_factory(dev), broker.port, tmp_path))
        _wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
        assert _bodies(obs, dev, "status")[-1]["state"] == "online"
        node.kill()
        off = _wait_body(obs, dev, "status", lambda b: b["state"] == "offline", node, 10)
        assert off["reason"] == "connection_lost" and off["kind"] == "node"
    finally:
        obs.close()


def test_broker_from_another_ca_is_refused(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0104"
    other = CertificateAuthority(tmp_path / "other-pki")
    other.init()
    foreign_root = other.issue_device(dev, tmp_path / "other-dev").directory / "root.der"
    obs = _observer(ca, broker.port, dev)
    try:
        node = _start(
            started,
            node_process(
                device_factory(dev), broker.port, tmp_path / "n", extra={"ca": str(foreign_root)}
            ),
        )
        wait_for(lambda: node.log_text().count("TLSError") >= 2, 15, what="two TLS failures")
        assert "not correctly signed by the trusted CA" in node.log_text()
        assert "online as" not in node.log_text()
        assert obs.received(contract.topic(dev, "status")) == []
        assert obs.received(contract.topic(dev, "heartbeat")) == []
        assert node.alive(), "the node keeps retrying"
    finally:
        obs.close()


def test_reconnects_after_broker_restart(
    ca: CertificateAuthority,
    device_factory: Callable[[str], DeviceCredentials],
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0105"
    own = Broker(ca, tmp_path / "broker").start()
    try:
        obs = _observer(ca, own.port, dev)
        try:
            node = _start(
                started,
                node_process(
                    device_factory(dev), own.port, tmp_path / "n", heartbeat_s=1, keepalive_s=5
                ),
            )
            _wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
            before = _wait_body(obs, dev, "heartbeat", lambda b: b["seq"] >= 1, node)["seq"]
        finally:
            obs.close()
        own.stop()
        wait_for(lambda: "reconnect attempt 2" in node.log_text(), 20, what="node retrying")
        restarted = time.time()
        own = Broker(ca, tmp_path / "broker", port=own.port).start()
        obs = _observer(ca, own.port, dev)
        try:
            back = _wait_body(
                obs, dev, "status", lambda b: b["state"] == "online" and b["ts"] > restarted, node
            )
            beat = _wait_body(obs, dev, "heartbeat", lambda b: b["ts"] > restarted, node)
        finally:
            obs.close()
        assert back["kind"] == "node"
        assert beat["seq"] > before, "same boot: seq keeps counting"
        assert node.alive()
        assert "NetworkError" in node.log_text()
    finally:
        own.stop()
