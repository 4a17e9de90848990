"""Happy path through a campaign on real devices: the real fleet server process serving a
real TUF repository (fleet_server.ota) on its OTA HTTPS listener, a real TLS Mosquitto, a
real agent run by its launcher from release slots (agent.ota), and a real MicroPython node
(unix port, 128 KiB heap) with its own updater. The campaigns are made through the REST
API; the server's engine publishes update_desired, the devices install, report, commit,
and their heartbeats carry the new release; the engine judges them healthy and finishes.
A campaign for a release the repository does not hold is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ota.launch import init_release
from agent.ota.settings import OtaSettings
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ota.release import add_agent_release, agent_target, firmware_target
from hil_tests.node import NodeProcess, node_process
from hil_tests.ota_rig import launcher_process
from hil_tests.procs import REPO, Broker, Process, free_port, wait_for
from hil_tests.server import ServerProcess
from tests import ota_helpers

pytestmark = pytest.mark.slow

AGENT, NODE = "rollout-box-1", "rollout-node-1"
NODE_FACTORY = "0.2.0"  # firmware/version.py: what the node's app tree runs


def _campaign(name: str, artifact: str, release: str, target: str, device: str) -> dict[str, Any]:
    return {"name": name, "artifact": artifact, "release": release, "target": target,
            "filter": {"device_ids": [device]}, "waves": [{"percent": 100}],
            "success_threshold": 1.0, "failure_threshold": 0.0, "soak_s": 2.0,
            "rate_per_min": 10, "device_deadline_s": 240, "trial_s": 60.5}  # fmt: skip


def _version(server: ServerProcess, device: str, artifact: str) -> str | None:
    found = server.device(device)
    return None if found is None else found["versions"].get(artifact)


@pytest.fixture
def fleet(ca: CertificateAuthority, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    broker = Broker(ca, tmp_path / "broker").start()
    repo = ota_helpers.make_repo(tmp_path / "tuf")
    work = tmp_path / "bundles"
    work.mkdir()
    for release in ("1.0.0", "1.1.0"):
        add_agent_release(repo, REPO, release, work)
    fw = ota_helpers.bundle_of(ota_helpers.FIRMWARE, "0.3.0", tmp_path / "fw.bundle")
    ota_helpers.publish_firmware(repo, fw, "0.3.0")  # publishes the agent releases too
    https = free_port()
    server = ServerProcess(
        tmp_path / "server", ca.dir, broker.port,
        extra={"ota": {"enabled": True, "repo_dir": str(repo.repo_dir), "https_port": https},
               "rollouts": {"tick_s": 0.25}},
    )  # fmt: skip
    operator = server.add_user("rollout-op", "operator")
    server.start_and_wait()
    procs: list[Process | NodeProcess] = []
    try:
        base = f"https://localhost:{https}/ota"
        root = tmp_path / "box" / "root.json"  # pinned at provisioning
        root.parent.mkdir(parents=True)
        shutil.copyfile(repo.repo_dir / "metadata" / "1.root.json", root)
        ota = {
            "metadata_url": f"{base}/metadata/",
            "targets_url": f"{base}/targets/",
            "trusted_root": str(root),
            "slots_dir": str(tmp_path / "box" / "slots"),
            "trial_s": 60,
            "trial_heartbeats": 2,
            "max_target_bytes": 4 * 1024 * 1024,
        }
        init_release(OtaSettings.model_validate(ota), work / "camfleet-agent-1.0.0.tar.gz",
                     "1.0.0")  # fmt: skip
        box = launcher_process(ca.issue_device(AGENT, tmp_path / "creds" / AGENT),
                               broker.port, tmp_path / "box" / "agent", ota)  # fmt: skip
        procs.append(box.start())
        keys, threshold = ota_helpers.pinned_keys(repo)
        node = node_process(
            ca.issue_device(NODE, tmp_path / "creds" / NODE), broker.port, tmp_path / "node",
            heartbeat_s=1, extra={"ota_url": base, "ota_keys": keys,
                                  "ota_threshold": threshold, "ota_commit_heartbeats": 2,
                                  "ota_attempts": 2},
        )  # fmt: skip
        procs.append(node)
        node.start()
        server.reader_token = operator  # reads as the operator too
        yield server, tmp_path
    finally:
        for p in procs:  # the launcher stops its agent on SIGTERM; a kill would orphan it
            p.stop(grace=20)
        server.stop()
        broker.stop()


def _run(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    status, made = server.post("/api/rollouts", body, token=server.reader_token)
    assert status == 201, made
    cid = made["campaign"]["id"]
    wait_for(lambda: server.get(f"/api/rollouts/{cid}")[1]["state"] in ("finished", "halted"),
             240, interval=0.5, what=f"campaign {body['name']} done")  # fmt: skip
    camp: dict[str, Any] = server.get(f"/api/rollouts/{cid}")[1]
    return camp


def test_happy_path_through_campaigns_on_a_real_agent_and_node(
    fleet: tuple[ServerProcess, Path],
) -> None:
    server, tmp = fleet
    wait_for(lambda: _version(server, AGENT, "agent") == "1.0.0", 90, interval=0.5,
             what="the agent's heartbeat from 1.0.0")  # fmt: skip
    wait_for(lambda: _version(server, NODE, "firmware") == NODE_FACTORY, 60, interval=0.5,
             what="the node's heartbeat")  # fmt: skip
    status, refused = server.post(
        "/api/rollouts",
        _campaign("nowhere", "agent", "9.9.9", agent_target("9.9.9"), AGENT),
        token=server.reader_token,
    )  # fmt: skip
    assert status == 422 and "not published" in refused["detail"]

    camp = _run(server, _campaign("node 0.3.0", "firmware", "0.3.0",
                                  firmware_target("0.3.0"), NODE))  # fmt: skip
    assert camp["state"] == "finished", camp
    assert _version(server, NODE, "firmware") == "0.3.0"
    state = server.get(f"/api/devices/{NODE}/update")[1]
    assert (state["state"], state["healthy"]) == ("committed", True)

    camp = _run(server, _campaign("box 1.1.0", "agent", "1.1.0", agent_target("1.1.0"), AGENT))
    assert camp["state"] == "finished", camp
    assert camp["waves"][0]["counts"]["healthy"] == 1
    assert _version(server, AGENT, "agent") == "1.1.0"
    state = server.get(f"/api/devices/{AGENT}/update")[1]
    assert (state["state"], state["from_release"], state["healthy"]) == (
        "committed", "1.0.0", True)  # fmt: skip
    assert (tmp / "box" / "slots" / "current").readlink() == Path("releases/1.1.0")
