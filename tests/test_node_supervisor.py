"""The cabinet supervisor: the box's heartbeats stop, the node power-cycles it through the
simulated relay after the deadline and not before, with backoff, and no more often than
the daily limit allows; the GPIO heartbeat line does the same with no broker at all. The
broker's ACL lets a node read its paired box's heartbeats and nothing else of it.

Real MicroPython (.mpy, 128 KiB heap), real TLS Mosquitto with the pairing ACL rendered
by fleet_server.broker.conf, the box played by a paho client holding the box's certificate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware import contract
from fleet_server.broker.conf import paired_box_acl, render_acl
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, free_port, wait_for
from tests.mqtt_helpers import Client, server_creds
from tests.node_helpers import (
    events,
    no_memory_errors,
    observer,
    start,
    started_nodes,
    state_json,
    wait_event,
)

MakeDevice = Callable[[str], DeviceCredentials]
PAIRS = {"node-0301": "box-0301", "node-0302": "box-0302"}


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    yield from started_nodes()


@pytest.fixture(scope="module")
def paired(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A TLS Mosquitto whose ACL pairs node-0301 with box-0301 and node-0302 with box-0302."""
    b = Broker(ca, tmp_path_factory.mktemp("paired-broker"), pairs=PAIRS)
    b.start()
    yield b
    b.stop()


def _client(broker: Broker, creds: DeviceCredentials) -> Client:
    return Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, creds.device_id)


def _box_beat(box: str, seq: int) -> tuple[str, bytes]:
    body = {"seq": seq, "kind": "agent", "interval_s": 1, "uptime_s": float(seq)}
    topic, data, _q, _r = contract.encode("heartbeat", box, body, time.time())
    return topic, data


def _cuts(sim: Path) -> list[int]:
    """Unix ms of every time the relay was energised (box power cut)."""
    path = sim / "relay_log"
    if not path.exists():
        return []
    pairs = [ln.split() for ln in path.read_text().splitlines()]
    return [int(t) for t, v in pairs if v == "1"]


def test_pairing_acl_lines_are_checked() -> None:
    lines = paired_box_acl({"node-0001": "cam-0001"})
    assert lines[1:] == ["user node-0001", "topic read camfleet/v1/cam-0001/heartbeat"]
    assert paired_box_acl({}) == []
    for bad in ({"node-0001": "node-0001"}, {"node-0001": "cam/#"}, {"_fleet-server": "cam-0001"}):
        with pytest.raises(contract.ProtocolError):
            paired_box_acl(bad)
    assert "%c" not in render_acl(PAIRS)


def test_node_reads_its_paired_box_heartbeat_and_nothing_else(
    paired: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    box1, box2 = device_factory("box-0301"), device_factory("box-0302")
    node1, node2 = device_factory("node-0301"), device_factory("node-0302")
    watcher = Client(paired.port, ca.root_cert_path, *server_creds(ca))
    clients = [watcher]
    try:
        watcher.subscribe(f"{contract.TOPIC_ROOT}/#")
        n1, n2 = _client(paired, node1), _client(paired, node2)
        b1, b2 = _client(paired, box1), _client(paired, box2)
        clients += [n1, n2, b1, b2]
        hb1 = contract.topic("box-0301", "heartbeat")
        n1.subscribe(hb1)
        n1.subscribe(contract.topic("box-0301", "status"))
        n1.subscribe(contract.topic("box-0301", "cmd_req"))
        n2.subscribe(hb1)  # paired with another box: must see nothing of box-0301
        b1.publish(contract.topic("box-0301", "status"), b"box status", retain=True)
        b1.publish(hb1, _box_beat("box-0301", 1)[1])
        watcher.publish(contract.topic("box-0301", "cmd_req"), b"box command")
        n1.publish(hb1, b"forged by the node")
        b2.publish(*_box_beat("box-0302", 1))
        n1.wait_for(hb1)
        watcher.wait_for(contract.topic("box-0302", "heartbeat"))
        time.sleep(0.5)
        assert n1.received(hb1) == [_box_beat_payload(n1, hb1)]
        assert n1.received(contract.topic("box-0301", "status")) == []
        assert n1.received(contract.topic("box-0301", "cmd_req")) == []
        assert n2.received(hb1) == []
        assert b"forged by the node" not in watcher.received(hb1)
        assert len(watcher.received(hb1)) == 1
    finally:
        watcher.publish(contract.topic("box-0301", "status"), b"", retain=True)
        for c in clients:
            c.close()


def _box_beat_payload(client: Client, topic: str) -> bytes:
    got = client.received(topic)
    assert len(got) == 1 and contract.decode(topic, got[0])[2]["id"] == "box-0301"
    return got[0]


def test_silent_box_is_power_cycled_after_the_deadline_with_backoff_and_a_limit(
    paired: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev, box = "node-0301", "box-0301"
    sim = tmp_path / "sim"
    settings = {
        "box_id": box,
        "box_deadline_s": 3,
        "box_off_s": 1,
        "box_boot_s": 1.5,
        "box_max_cycles": 2,
    }
    obs = observer(ca, paired.port, dev)
    beater = _client(paired, device_factory(box))
    try:
        node = start(
            started,
            node_process(
                device_factory(dev), paired.port, tmp_path / "n", sim_dir=sim, extra=settings
            ),
        )
        wait_for(lambda: "watching box heartbeats" in node.log_text(), 10, what="box subscription")
        last = 0.0
        for seq in range(8):  # alive for a while: never cut
            beater.publish(*_box_beat(box, seq))
            last = time.time()
            time.sleep(0.5)
        assert _cuts(sim) == []
        first = wait_event(obs, dev, "box.power_off", node, timeout=10)
        cut1 = _cuts(sim)[0] / 1000
        assert 3.0 <= cut1 - last <= 4.5, cut1 - last  # after the deadline, not before
        assert first["data"] == {
            "by": "supervisor",
            "silent_s": 3,
            "cycle": 1,
            "today": 1,
            "limit": 2,
        }
        limit = wait_event(obs, dev, "box.cycle_limit", node, timeout=15)
        assert limit["data"]["today"] == 2 and limit["data"]["limit"] == 2
        cut2 = _cuts(sim)[1] / 1000
        # off 1 s, then 1.5 s of grace for the box to boot: the second cut no sooner
        assert cut2 - cut1 >= 2.5, cut2 - cut1
        time.sleep(4)  # more silence: the limit holds, no third cut
        assert len(_cuts(sim)) == 2
        offs = events(obs, dev, "box.power_off")
        assert [e["data"]["cycle"] for e in offs] == [1, 2]
        assert len(events(obs, dev, "box.power_on")) == 2
        assert (sim / "pin_relay").read_text() == "0", "the box is left powered"
        assert len(state_json(tmp_path / "n", "box.json")["cycles"]) == 2

        beater.publish(*_box_beat(box, 100))  # the box is back
        back = wait_event(obs, dev, "box.back", node)
        assert back["seq"] > limit["seq"]
        types = [e["type"] for e in events(obs, dev) if e["type"].startswith("box.")]
        assert types == [
            "box.power_off",
            "box.power_on",
            "box.power_off",
            "box.power_on",
            "box.cycle_limit",
            "box.back",
        ]
        no_memory_errors(node)
    finally:
        beater.close()
        obs.close()


def test_heartbeat_line_works_without_any_broker(
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    """The box toggles a GPIO line; the broker is not there at all. The node still cuts the
    power after the deadline, keeps the events, and delivers them once a broker is up."""
    dev = "node-0303"
    sim = tmp_path / "sim"
    sim.mkdir()
    line = sim / "pin_box_heartbeat"
    line.write_text("0")
    port = free_port()
    settings = {"box_deadline_s": 2, "box_off_s": 0.5, "box_boot_s": 30, "box_max_cycles": 1}
    node = start(
        started,
        node_process(device_factory(dev), port, tmp_path / "n", sim_dir=sim, extra=settings),
    )
    stop = threading.Event()
    toggles: list[float] = []

    def box() -> None:
        level = 0
        for _ in range(12):  # alive for about 6 s
            if stop.wait(0.5):
                return
            level ^= 1
            line.write_text(str(level))
            toggles.append(time.time())

    beating = threading.Thread(target=box)
    beating.start()
    try:
        beating.join(timeout=20)
        assert _cuts(sim) == [], "cut while the line was toggling"
        wait_for(lambda: bool(_cuts(sim)), 10, what="a power cut")
        assert 2.0 <= _cuts(sim)[0] / 1000 - toggles[-1] <= 3.5
        wait_for(lambda: "box.power_on" in node.log_text(), 5, what="power back on")
        assert "online as" not in node.log_text()
        own = Broker(ca, tmp_path / "broker", port=port).start()
        obs = observer(ca, port, dev)
        try:
            wait_event(obs, dev, "box.power_on", node, timeout=20)
            types = [e["type"] for e in events(obs, dev)]
            assert types == ["node.boot", "box.power_off", "box.power_on"], types
            assert events(obs, dev, "box.power_off")[0]["data"]["by"] == "supervisor"
        finally:
            obs.close()
            own.stop()
        no_memory_errors(node)
    finally:
        stop.set()
        beating.join(timeout=5)
