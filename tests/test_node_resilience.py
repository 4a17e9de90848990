"""The node through trouble: the broker away for a while (events kept in the flash ring,
delivered in order afterwards, an overflowing ring's drops counted and reported), and a
task that hangs (the simulated watchdog resets the board; the next boot reports why).

Real MicroPython (.mpy, 128 KiB heap) and real TLS Mosquitto; door switches and the I2C
bus are the simulated board's files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client
from tests.node_helpers import (
    SessionObserver,
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


def _unique(obs: Client, dev: str) -> list[dict[str, Any]]:
    """Events as the server keeps them: once per event_id (QoS 1 may deliver twice)."""
    seen: set[str] = set()
    out = []
    for e in events(obs, dev):
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


def _more(node: NodeProcess, text: str, before: int) -> Callable[[], bool]:
    return lambda: node.log_text().count(text) > before


def _toggle_door(sim: Path, node: NodeProcess, times: int, start_open: bool) -> list[str]:
    """Open and close the door ``times`` times, each change seen by the node; the types."""
    made = []
    for i in range(times):
        opened = start_open if i % 2 == 0 else not start_open
        kind = "door.open" if opened else "door.closed"
        before = node.log_text().count(kind)
        (sim / "pin_door").write_text("1" if opened else "0")
        wait_for(_more(node, kind, before), 5, what=kind)
        made.append(kind)
    return made


def test_broker_outage_events_kept_in_order_and_overflow_counted(
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0401"
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "pin_door").write_text("0")
    own = Broker(ca, tmp_path / "broker").start()
    port = own.port
    obs = SessionObserver(ca, port, dev, "obs-0401")
    try:
        node = start(
            started,
            node_process(
                device_factory(dev),
                port,
                tmp_path / "n",
                heartbeat_s=1,
                sim_dir=sim,
                extra={
                    "sensor_s": 0.25,
                    "ring_slots": 4,
                    # no fleet server here to send receipts: a PUBACK delivers (the
                    # receipts path: tests/test_node_receipts.py)
                    "receipt_timeout_s": 0,
                },
            ),
        )
        wait_event(obs, dev, "node.boot", node)

        # 1. an outage shorter than the ring: everything arrives, in order
        own.stop()
        made = _toggle_door(sim, node, 4, start_open=True)
        own = Broker(ca, tmp_path / "broker", port=port).start()
        wait_for(lambda: len(_unique(obs, dev)) >= 1 + 4, 20, what="buffered events")
        got = _unique(obs, dev)[1:]
        assert [e["type"] for e in got] == made
        assert [e["seq"] for e in got] == [2, 3, 4, 5]
        assert len({e["event_id"] for e in got}) == 4
        assert events(obs, dev, "buffer.dropped") == []
        wait_body(obs, dev, "heartbeat", lambda b: b.get("outbox") == 0, node)

        # 2. an outage longer than the ring: the oldest are dropped, counted, reported
        # first; the newest four arrive in order after the report
        seen = node.log_text().count("NetworkError")
        own.stop()
        wait_for(lambda: node.log_text().count("NetworkError") > seen, 10, what="loss noticed")
        made = _toggle_door(sim, node, 10, start_open=True)
        down_state = state_json(tmp_path / "n", "events.json")
        assert down_state["unreported"] == 6 and down_state["dropped"] == 6
        own = Broker(ca, tmp_path / "broker", port=port).start()
        wait_for(lambda: len(_unique(obs, dev)) >= 1 + 4 + 5, 20, what="report and events")
        got = _unique(obs, dev)[1 + 4 :]
        report = got[0]
        assert report["type"] == "buffer.dropped"
        assert report["data"] == {"dropped": 6, "first_seq": 6, "last_seq": 11, "total": 6}
        assert report["seq"] == 11 and report["event_id"] == f"{dev}-11-dropped"
        assert [e["type"] for e in got[1:]] == made[6:]
        assert [e["seq"] for e in got[1:]] == [12, 13, 14, 15]
        saved = state_json(tmp_path / "n", "events.json")
        kept = {k: saved[k] for k in ("acked", "dropped", "unreported", "first", "last")}
        assert kept == {"acked": 15, "dropped": 6, "unreported": 0, "first": 0, "last": 0}
        assert node.alive() and node.boots == 1
        no_memory_errors(node)
    finally:
        obs.close()
        own.stop()


def test_hung_task_watchdog_resets_and_the_cause_is_reported(
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: MakeDevice,
    tmp_path: Path,
    started: list[NodeProcess],
) -> None:
    dev = "node-0402"
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "temp_c").write_text("21.5")
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
                extra={"sensor_s": 0.25, "watchdog_ms": 2000},
            ),
        )
        first = wait_body(obs, dev, "heartbeat", lambda b: b["seq"] >= 2, node)
        assert first["reset_cause"] == "power_on" and first["temp_c"] == 21.5
        assert (sim / "wdt_fed").exists(), "the watchdog is armed and fed"
        (sim / "i2c_hang").write_text("")  # the cabinet sensor's bus hangs: the loop stops
        hung_at = time.time()
        off = wait_body(obs, dev, "status", lambda b: b["state"] == "offline", node, timeout=10)
        assert off["reason"] == "connection_lost", "a reset says no goodbye: the will speaks"
        wait_for(lambda: node.boots == 2, 10, what="the board restarting the node")
        assert node.resets == ["wdt"]
        assert time.time() - hung_at >= 2.0
        boot = wait_body(
            obs,
            dev,
            "event",
            lambda b: b["type"] == "node.boot" and b["data"]["reset_cause"] == "wdt",
            node,
        )
        beat = wait_body(obs, dev, "heartbeat", lambda b: b["reset_cause"] == "wdt", node)
        assert beat["seq"] == 0 and beat["temp_c"] == 21.5, "the reset cleared the stuck bus"
        assert boot["ts"] > hung_at
        assert "watchdog expired" in node.log_text()
        assert not (sim / "i2c_hang").exists()
        time.sleep(1.5)
        assert node.boots == 2 and node.alive(), "one reset, then it runs"
        assert [e["data"]["reset_cause"] for e in events(obs, dev, "node.boot")] == [
            "power_on",
            "wdt",
        ]
        no_memory_errors(node)
    finally:
        obs.publish(contract.topic(dev, "status"), b"", retain=True)
        obs.close()
