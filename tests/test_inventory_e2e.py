"""The real agent and the real MicroPython node send their hardware inventory in the first
heartbeat after each connect, through the real broker, and it reaches the server's API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_process
from hil_tests.node import node_process
from hil_tests.procs import Broker, Process, wait_for
from hil_tests.server import ServerProcess
from tests.mqtt_helpers import Client
from tests.node_helpers import observer

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture(scope="module")
def broker(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """This module's own broker (overrides the session one): sessions other tests' workers
    left in the shared group would take a share of these messages."""
    own = Broker(ca, tmp_path_factory.mktemp("inv-e2e-broker")).start()
    yield own
    own.stop()


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("inv-e2e"), ca.dir, broker.port,
                        client_id="fleet-inv-e2e")  # fmt: skip
    srv.start_and_wait()
    yield srv
    srv.stop()


def _heartbeats(obs: Client, device_id: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in obs.received(contract.topic(device_id, "heartbeat"))]


def _take_over(broker: Broker, creds: DeviceCredentials) -> None:
    """Connect with the device's own certificate and client id: the broker drops the
    device's connection (session take-over), and the device connects again by itself."""
    thief = Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem,
                   client_id=creds.device_id, clean=False)  # fmt: skip
    time.sleep(0.3)  # the CONNACK; closing at once is fine either way
    thief.close()


def _check_inventory_per_connect(
    obs: Client, broker: Broker, creds: DeviceCredentials, what: str
) -> list[dict[str, Any]]:
    dev = creds.device_id
    wait_for(lambda: len(_heartbeats(obs, dev)) >= 3, 20, what=f"{what} heartbeats")
    first = _heartbeats(obs, dev)
    with_hw = [b for b in first if "hardware" in b]
    assert len(with_hw) == 1 and "hardware" in first[0]  # the first one carried it
    _take_over(broker, creds)
    seen = len(first)
    wait_for(lambda: sum("hardware" in b for b in _heartbeats(obs, dev)) >= 2, 30,
             what=f"{what} inventory again after a reconnect")  # fmt: skip
    later = _heartbeats(obs, dev)[seen:]
    # the inventory came again once, in the first heartbeat after the new connect
    assert [("hardware" in b) for b in later].count(True) == 1
    return with_hw


def test_agent_sends_inventory_after_each_connect(
    server: ServerProcess,
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
) -> None:
    creds = device_factory("inv-agent-01")
    obs = observer(ca, broker.port, creds.device_id)
    proc: Process = agent_process(creds, broker.port, tmp_path / "agent", heartbeat_s=1)
    try:
        proc.start()
        wait_for(lambda: (server.device(creds.device_id) or {}).get("hardware") is not None, 20,
                 what="agent inventory in the API")  # fmt: skip
        dev = server.device(creds.device_id)
        assert dev is not None
        hw = dev["hardware"]
        assert hw["camera_backend"] == "synthetic"
        assert isinstance(hw["cpus"], int) and hw["cpus"] >= 1
        assert hw["mem_mb"] > 0 and hw["kernel"] and hw["arch"]
        sent = _check_inventory_per_connect(obs, broker, creds, "agent")
        assert sent[0]["hardware"] == hw
        assert sent[0]["seq"] == 0  # the very first heartbeat carried it
    finally:
        proc.stop()
        obs.close()


def test_node_sends_inventory_after_each_connect(
    server: ServerProcess,
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
) -> None:
    creds = device_factory("inv-node-01")
    obs = observer(ca, broker.port, creds.device_id)
    proc = node_process(creds, broker.port, tmp_path / "node", heartbeat_s=1,
                        sim_dir=tmp_path / "node" / "sim")  # fmt: skip
    try:
        proc.start()
        wait_for(lambda: (server.device(creds.device_id) or {}).get("hardware") is not None, 20,
                 what="node inventory in the API")  # fmt: skip
        dev = server.device(creds.device_id)
        assert dev is not None
        hw = dev["hardware"]
        assert hw["platform"] == "linux"  # the unix port of MicroPython
        assert hw["model"] and 0 < hw["heap_kb"] <= 4096
        _check_inventory_per_connect(obs, broker, creds, "node")
        status, page = server.get("/api/devices?hardware=" + hw["model"].split()[0])
        assert status == 200 and creds.device_id in [d["id"] for d in page["items"]]
    finally:
        proc.stop()
        obs.close()
