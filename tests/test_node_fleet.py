"""The node as a fleet member: it joins, reports, applies a desired config and answers
commands; malformed configs and commands are refused with a reason and change nothing.

Real MicroPython (the .mpy build, 128 KiB heap) against the real TLS Mosquitto; the
cabinet's pins and sensors are the simulated board's files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, wait_for
from tests.node_helpers import (
    answer,
    bodies,
    clear_retained,
    command,
    desire,
    events,
    no_memory_errors,
    observer,
    start,
    started_nodes,
    state_json,
    wait_body,
    wait_event,
)

MakeDevice = Callable[[str], DeviceCredentials]


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    yield from started_nodes()


def _sim(tmp_path: Path, **files: str) -> Path:
    sim = tmp_path / "sim"
    sim.mkdir()
    for name, text in files.items():
        (sim / name).write_text(text)
    return sim


def _relay_log(sim: Path) -> list[tuple[int, int]]:
    lines = (sim / "relay_log").read_text().split()
    return [(int(a), int(b)) for a, b in zip(lines[::2], lines[1::2], strict=True)]


def test_joins_reports_applies_config_and_answers_commands(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0201"
    sim = _sim(
        tmp_path,
        temp_c="24.5",
        humidity_pct="40",
        pin_door="0",
        pin_mains="1",
        battery_v="13.1",
        rssi="-60",
    )
    obs = observer(ca, broker.port, dev)
    try:
        node = start(
            started,
            node_process(
                device_factory(dev),
                broker.port,
                tmp_path / "n",
                heartbeat_s=1,
                sim_dir=sim,
                extra={"sensor_s": 0.25},
            ),
        )
        wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
        boot = wait_event(obs, dev, "node.boot", node)
        assert boot["data"]["reset_cause"] == "power_on"
        beat = wait_body(obs, dev, "heartbeat", lambda b: True, node)
        assert beat["interval_s"] == 1 and beat["temp_c"] == 24.5 and beat["rssi"] == -60
        assert beat["outbox"] == 0 and beat["reset_cause"] == "power_on"

        # a desired config: validated, applied, persisted, reported with its version
        desire(obs, dev, 3, {"heartbeat_s": 2, "temp_high_c": 30})
        rep = wait_body(obs, dev, "config_reported", lambda b: b["version"] == 3, node)
        assert rep["ok"] is True and "error" not in rep
        saved = state_json(tmp_path / "n", "desired.json")
        assert saved == {"version": 3, "config": {"heartbeat_s": 2, "temp_high_c": 30}}
        applied_at = time.time()
        slow = wait_body(
            obs, dev, "heartbeat", lambda b: b["interval_s"] == 2 and b["ts"] > applied_at, node
        )
        assert slow["seq"] > beat["seq"]
        (sim / "temp_c").write_text("33")  # over the new limit
        high = wait_event(obs, dev, "temp.high", node)
        assert high["data"] == {"temp_c": 33.0, "limit": 30}

        # commands
        command(obs, dev, "c-ping", "ping")
        res = answer(obs, dev, "c-ping", node)
        assert res["ok"] is True and res["result"]["pong"] is True
        assert res["result"]["uptime_s"] > 0

        command(obs, dev, "c-read", "read_sensors")
        got = answer(obs, dev, "c-read", node)["result"]
        assert got["temp_c"] == 33.0 and got["humidity_pct"] == 40.0
        assert got["door"] is False and got["mains"] is True and got["battery_v"] == 13.1
        assert got["relay"] is False and got["rssi"] == -60 and got["box_state"] == "watch"

        command(obs, dev, "c-cycle", "relay", {"action": "cycle", "off_s": 1})
        res = answer(obs, dev, "c-cycle", node)
        assert res["ok"] is True and res["result"]["power"] == "off"
        on = wait_event(obs, dev, "box.power_on", node)
        off = events(obs, dev, "box.power_off")[0]
        assert off["data"] == {"by": "command", "off_s": 1, "cid": "c-cycle"}
        assert on["data"]["by"] == "command" and on["seq"] > off["seq"]
        (t_off, v1), (t_on, v0) = _relay_log(sim)[-2:]
        assert (v1, v0) == (1, 0) and 900 <= t_on - t_off <= 2500

        # reboot: answered, offline with reason, a reset, the cause reported after boot,
        # the applied config kept; the same request again is answered and not redone
        command(obs, dev, "c-boot", "reboot")
        assert answer(obs, dev, "c-boot", node)["result"] == {"rebooting": True}
        wait_body(
            obs,
            dev,
            "status",
            lambda b: b["state"] == "offline" and b.get("reason") == "reboot",
            node,
        )
        wait_for(lambda: node.boots == 2, 10, what="the board restarting the node")
        assert node.resets == ["soft"]
        boot2 = wait_body(
            obs,
            dev,
            "event",
            lambda b: b["type"] == "node.boot" and b["data"]["reset_cause"] == "soft",
            node,
        )
        assert boot2["data"]["note"] == "command reboot" and boot2["seq"] > on["seq"]
        after = wait_body(obs, dev, "heartbeat", lambda b: b["reset_cause"] == "soft", node)
        assert after["interval_s"] == 2 and after["seq"] == 0
        command(obs, dev, "c-boot", "reboot")
        wait_for(
            lambda: len([b for b in bodies(obs, dev, "cmd_res") if b["cid"] == "c-boot"]) == 2,
            10,
            what="the repeated answer",
        )
        time.sleep(1.5)
        assert node.boots == 2 and node.alive(), "a repeated reboot request must not reboot"

        seqs = [e["seq"] for e in events(obs, dev)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        no_memory_errors(node)
    finally:
        clear_retained(obs, dev)
        obs.close()


def _version(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda b: bool(b["version"] == version)


def test_malformed_config_and_commands_are_refused_and_change_nothing(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0202"
    sim = _sim(tmp_path, pin_door="0")
    work = tmp_path / "n"
    obs = observer(ca, broker.port, dev)
    try:
        node = start(
            started,
            node_process(device_factory(dev), broker.port, work, heartbeat_s=1, sim_dir=sim),
        )
        wait_body(obs, dev, "status", lambda b: b["state"] == "online", node)
        desire(obs, dev, 5, {"heartbeat_s": 1.5})
        wait_body(obs, dev, "config_reported", lambda b: b["version"] == 5 and b["ok"], node)
        applied = (work / "state" / "desired.json").read_bytes()

        refused: dict[int, tuple[dict[str, Any], str]] = {
            6: ({"heartbeat_s": 1, "colour": "red"}, "unknown setting 'colour'"),
            7: ({"heartbeat_s": "fast"}, "'heartbeat_s' must be num"),
            8: ({"heartbeat_s": 0.1}, "'heartbeat_s' must be in 1..86400"),
            9: ({"box_id": dev}, "'box_id' is this node itself"),
            10: ({"broker_host": "evil.example"}, "only be set in the node's config file"),
            11: ({"temp_low_c": 50, "temp_high_c": 40}, "'temp_low_c' must be below"),
        }
        for version, (config, reason) in refused.items():
            desire(obs, dev, version, config)
            rep = wait_body(obs, dev, "config_reported", _version(version), node)
            assert rep["ok"] is False and reason in rep["error"], rep
        # below the contract: no version to report, the node only refuses and counts
        obs.publish(contract.topic(dev, "config_desired"), b'{"v": 1, "id": "x"', retain=True)
        # an older version than the one applied: kept, the applied one reported again
        desire(obs, dev, 4, {"heartbeat_s": 30})
        wait_for(
            lambda: (
                [b["version"] for b in bodies(obs, dev, "config_reported")][-1:] == [5]
                and len(bodies(obs, dev, "config_reported")) >= 8
            ),
            10,
            what="the applied version reported again",
        )

        sent_at = time.time()
        command(obs, dev, "c-1", "selfdestruct")
        command(obs, dev, "c-2", "relay", {"action": "explode"})
        command(obs, dev, "c-3", "relay", {"action": "off", "volts": 230})
        command(obs, dev, "c-4", "relay", {"action": "on", "off_s": 3})
        command(obs, dev, "c-5", "relay", {"action": "off"}, deadline=time.time() - 60)
        command(obs, dev, "c-6", "relay", {"action": "cycle", "off_s": 9999})
        command(obs, dev, "c-7", "relay")
        topic = contract.topic(dev, "cmd_req")
        obs.publish(topic, json.dumps({"v": 1, "id": dev, "ts": 1, "cid": "c-8"}).encode())
        obs.publish(topic, b"\xff not json")
        obs.publish(
            topic, b'{"v": 1, "id": "' + dev.encode() + b'", "pad": "' + b"x" * 5000 + b'"}'
        )
        expect = {
            "c-1": "unknown_command: 'selfdestruct'",
            "c-2": "bad_args: 'action' must be one of on, off, cycle",
            "c-3": "bad_args: relay takes no arg 'volts'",
            "c-4": "bad_args: off_s goes only with action 'cycle'",
            "c-5": "expired: deadline",
            "c-6": "bad_args: 'off_s' must be in 0.5..600",
            "c-7": "bad_args: relay needs arg 'action'",
            "c-8": "bad_request: bad_schema: cmd_req: missing field 'cmd'",
        }
        for cid, reason in expect.items():
            res = answer(obs, dev, cid, node)
            assert res["ok"] is False and res["error"].startswith(reason), res
            assert "result" not in res
        command(obs, dev, "c-9", "ping")
        assert answer(obs, dev, "c-9", node)["ok"] is True

        # nothing changed: relay never moved, no box events, config file, heartbeat period
        assert (sim / "pin_relay").read_text() == "0"
        assert [ln.split()[1] for ln in (sim / "relay_log").read_text().splitlines()] == ["0"]
        assert not [e for e in events(obs, dev) if e["type"].startswith("box.")]
        assert (work / "state" / "desired.json").read_bytes() == applied
        wait_body(obs, dev, "heartbeat", lambda b: b["ts"] > sent_at + 1, node)
        later = [b for b in bodies(obs, dev, "heartbeat") if b["ts"] > sent_at]
        assert all(b["interval_s"] == 1.5 for b in later)
        log = node.log_text()
        assert "over max_packet" in log and "reconnect attempt" not in log
        assert log.count("rejected message on") >= 3  # bad config JSON, c-8, not JSON, oversized
        assert node.alive() and node.boots == 1
        no_memory_errors(node)
    finally:
        clear_retained(obs, dev)
        obs.close()
