"""The fleet end to end on real processes: broker, fleet server, agent, MicroPython node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_process
from hil_tests.images import write_test_images
from hil_tests.node import node_process
from hil_tests.procs import Broker, Process, wait_for
from hil_tests.server import ServerProcess

MakeDevice = Callable[[str], DeviceCredentials]
KEEPALIVE = 5


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("e2e-server"), ca.dir, broker.port, grace=3.0)
    srv.start_and_wait()
    yield srv
    srv.stop()


def _state(server: ServerProcess, device_id: str) -> str | None:
    dev = server.device(device_id)
    return None if dev is None else str(dev["state"])


@pytest.fixture
def agent(
    broker: Broker, device_factory: MakeDevice, tmp_path: Path
) -> Iterator[tuple[str, Process]]:
    images = write_test_images(tmp_path / "images", count=4)
    creds = device_factory("e2e-agent-01")
    proc = agent_process(
        creds,
        broker.port,
        tmp_path / "agent",
        heartbeat_s=1,
        keepalive_s=KEEPALIVE,
        camera_dir=images[0].parent,
    )
    yield creds.device_id, proc
    proc.stop()


@pytest.fixture
def node(
    broker: Broker, device_factory: MakeDevice, tmp_path: Path
) -> Iterator[tuple[str, Process]]:
    creds = device_factory("e2e-node-01")
    proc = node_process(
        creds,
        broker.port,
        tmp_path / "node",
        heartbeat_s=1,
        keepalive_s=KEEPALIVE,
        sim_dir=tmp_path / "node" / "sim",
    )
    yield creds.device_id, proc
    proc.stop()


def test_agent_and_node_online_within_10s(
    server: ServerProcess, agent: tuple[str, Process], node: tuple[str, Process]
) -> None:
    t0 = time.monotonic()
    agent[1].start()
    node[1].start()
    wait_for(
        lambda: _state(server, agent[0]) == "online" and _state(server, node[0]) == "online",
        10,
        what="agent and node online in the API",
    )
    assert time.monotonic() - t0 < 10
    # both report real health through the contract
    wait_for(
        lambda: all((server.device(d) or {}).get("last_heartbeat") for d in (agent[0], node[0])),
        5,
        what="agent and node heartbeats",
    )
    a, n = server.device(agent[0]), server.device(node[0])
    assert a is not None and n is not None
    assert a["kind"] == "agent" and n["kind"] == "node"
    assert a["versions"]["agent"] and n["versions"]["firmware"]
    assert n["last_heartbeat"]["mem_free"] > 0
    assert a["last_heartbeat"]["camera"] == "ok"


def test_kill_9_agent_goes_offline_within_one_and_a_half_keepalive(
    server: ServerProcess, agent: tuple[str, Process]
) -> None:
    device_id, proc = agent
    proc.start()
    wait_for(lambda: _state(server, device_id) == "online", 10, what="agent online")
    proc.kill()
    t0 = time.monotonic()
    wait_for(
        lambda: _state(server, device_id) == "offline",
        1.5 * KEEPALIVE,
        what="agent offline after kill -9",
    )
    assert time.monotonic() - t0 <= 1.5 * KEEPALIVE
    dev = server.device(device_id)
    assert dev is not None
    assert dev["state_reason"] == "connection_lost"


def test_hung_agent_goes_offline_by_deadline_and_comes_back(
    server: ServerProcess, agent: tuple[str, Process]
) -> None:
    """A frozen process keeps its TCP connection for a while: the server's deadline (or the
    broker's keepalive, whichever is first) marks it offline; it returns when it thaws."""
    device_id, proc = agent
    proc.start()
    wait_for(lambda: _state(server, device_id) == "online", 10, what="agent online")
    # the deadline is a multiple of the interval the device announced in its heartbeat
    wait_for(
        lambda: (server.device(device_id) or {}).get("heartbeat_interval_s") == 1,
        10,
        what="first heartbeat",
    )
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(
            lambda: _state(server, device_id) == "offline",
            1.5 * KEEPALIVE + 1,
            what="hung agent offline",
        )
        assert time.monotonic() - t0 <= 1.5 * KEEPALIVE + 1
        dev = server.device(device_id)
        assert dev is not None
        # 3 x 1 s heartbeat interval comes before the broker's 1.5 x 5 s keepalive
        assert dev["state_reason"] == "heartbeat_deadline"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for(lambda: _state(server, device_id) == "online", 15, what="agent back online")


def test_kill_9_node_goes_offline(server: ServerProcess, node: tuple[str, Process]) -> None:
    device_id, proc = node
    proc.start()
    wait_for(lambda: _state(server, device_id) == "online", 10, what="node online")
    proc.kill()
    wait_for(
        lambda: _state(server, device_id) == "offline",
        1.5 * KEEPALIVE,
        what="node offline after kill -9",
    )


def test_technician_check_proves_the_device_reports(
    server: ServerProcess, agent: tuple[str, Process]
) -> None:
    """camfleet-provision check (the installed console script) against the real API."""
    device_id, proc = agent
    proc.start()
    ok = subprocess.run(
        [
            _script("camfleet-provision"),
            "check",
            device_id,
            "--api",
            server.base_url,
            "--api-token",
            server.reader_token,
            "--timeout",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"{device_id} is online" in ok.stdout
    missing = subprocess.run(
        [
            _script("camfleet-provision"),
            "check",
            "never-installed",
            "--api",
            server.base_url,
            "--api-token",
            server.reader_token,
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 1
    assert "never seen" in missing.stderr
    unreachable = subprocess.run(
        [
            _script("camfleet-provision"),
            "check",
            device_id,
            "--api",
            "http://127.0.0.1:9",
            "--api-token",
            server.reader_token,
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr
    refused = subprocess.run(
        [_script("camfleet-provision"), "check", device_id, "--api", server.base_url,
         "--api-token", "cf_api_not-a-real-token", "--timeout", "5"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "token was refused" in refused.stderr


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} not installed"
    return str(path)
