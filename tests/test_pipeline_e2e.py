"""Nothing lost, end to end: the real agent process (real model on frames made of real
photos), a real TLS Mosquitto and the real fleet server. The broker goes down while events
are produced, the agent is killed with SIGKILL in the middle of the burst, both come back:
every event the agent ever committed reaches the server exactly once.

Also: a covered camera is reported within the configured time (heartbeat and event), and
the server stores an event sent twice once (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from firmware import contract
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.migrate import upgrade
from hil_tests import scenes
from hil_tests.agent import agent_process
from hil_tests.checks import every_item
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess
from tests.detection_helpers import model_files
from tests.mqtt_helpers import Client, server_creds

__all__ = ["model_files"]  # fixture

Factory = Callable[[str], DeviceCredentials]


def _server_events(server: ServerProcess, device: str) -> list[dict[str, Any]]:
    return every_item(server, f"/api/events?device_id={device}")


def _outbox_state(state_dir: Path) -> tuple[int, int]:
    """(rows waiting, next seq) read straight from the agent's outbox file."""
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        seq = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
    return int(rows), int(seq)


def _pipeline(model_dir: Path) -> dict[str, object]:
    return {
        "pipeline": {
            "detector": {"model_dir": str(model_dir), "threads": 1},
            # an event for every detection: a dense burst of events
            "tracker": {"update_every_s": 0.0, "min_hits": 1},
            "scene": {"report_after_s": 600.0, "frozen_after_s": 600.0},
        }
    }


def test_broker_outage_and_kill_9_lose_nothing_and_repeat_nothing(
    tmp_path: Path, ca: CertificateAuthority, device_factory: Factory, model_files: Any
) -> None:
    device = "cam-e2e-burst"
    creds = device_factory(device)
    frames = tmp_path / "frames"
    scenes.write_frames(scenes.crossing_scene(count=2, frames_each=18, gap=2), frames, 40)
    broker = Broker(ca, tmp_path / "broker").start()
    server = ServerProcess(tmp_path / "server", ca.dir, broker.port).start_and_wait()
    work = tmp_path / "agent"
    extra = _pipeline(model_files.folder) | {
        "camera": {"type": "files", "path": str(frames), "fps": 8.0}
    }
    agent = agent_process(creds, broker.port, work, camera_dir=frames, extra=extra)
    state = work / "state"
    try:
        agent.start()
        wait_for(lambda: len(_server_events(server, device)) >= 5, 60, 0.2, "first events")

        broker.stop()  # outage: the agent keeps detecting, the outbox fills
        wait_for(lambda: _outbox_state(state)[0] >= 10, 30, 0.1, "events piling up on disk")
        agent.kill()  # power cut in the middle of the burst, broker still down
        waiting, committed = _outbox_state(state)
        assert waiting >= 10

        broker = Broker(ca, tmp_path / "broker", port=broker.port).start()
        # Mosquitto (2.0.x) does not bring a shared subscription back from its persistence
        # after a restart: what devices publish before the server has subscribed again
        # goes to no one. The agent comes back after the server here (see the report).
        wait_for(lambda: server.metric("camfleet_mqtt_connected") == 1, 30, 0.1, "ingest back")
        time.sleep(1.0)  # its SUBSCRIBE follows the CONNACK
        agent.start()  # same state dir: the outbox is picked up where it was
        wait_for(lambda: _outbox_state(state)[1] >= committed + 5, 60, 0.2, "new events")
        assert agent.stop(grace=15) == 0  # clean stop: ends tracks, drains the outbox
        waiting, committed = _outbox_state(state)
        assert waiting == 0, "outbox not drained after a clean stop"

        wait_for(
            lambda: len(_server_events(server, device)) >= committed, 30, 0.2, "all on the server"
        )
        time.sleep(0.5)
        events = _server_events(server, device)
        seqs = sorted(e["seq"] for e in events)
        assert seqs == list(range(committed)), "an event is missing or stored twice"
        assert len({e["event_id"] for e in events}) == committed
        types = {e["type"] for e in events}
        assert {"track.new", "track.update", "track.end"} <= types, types
        assert all(e["data"].get("label") == "Person" for e in events if e["type"] == "track.new")

        # the same event once more, straight from the device: stored once, counted as a dup
        dup_before = server.metric("camfleet_ingest_duplicates_total")
        again = {k: v for k, v in events[0].items() if k in ("seq", "event_id", "type", "data")}
        topic, payload, _q, _r = contract.encode("event", device, again, 1.8e9)
        client = Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, device)
        client.publish(topic, payload)
        client.close()
        wait_for(
            lambda: server.metric("camfleet_ingest_duplicates_total") > dup_before, 10, 0.1, "dup"
        )
        assert len(_server_events(server, device)) == committed
    finally:
        agent.stop()
        server.stop()
        broker.stop()


def test_covered_camera_is_reported_within_the_configured_time(
    tmp_path: Path,
    broker: Broker,
    ca: CertificateAuthority,
    device_factory: Factory,
    model_files: Any,
) -> None:
    device = "cam-e2e-covered"
    creds = device_factory(device)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(2)
    for i in range(10):  # a lens under a cover: dark, nearly uniform, a little noise
        img = np.clip(rng.normal(6, 1.0, (240, 320, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(frames / f"f{i:02d}.png"), img)
    watcher = Client(broker.port, ca.root_cert_path, *server_creds(ca), "wc")
    watcher.subscribe(f"{contract.TOPIC_ROOT}/{device}/#")
    extra = {
        "camera": {"type": "files", "path": str(frames), "fps": 5.0},
        "pipeline": {
            "detector": {"model_dir": str(model_files.folder), "threads": 1},
            "scene": {"report_after_s": 2.0, "clear_after_s": 1.0},
        },
    }
    agent = agent_process(creds, broker.port, tmp_path / "agent", heartbeat_s=1, extra=extra)
    try:
        agent.start()
        event_topic = contract.topic(device, "event")
        watcher.wait_for(contract.topic(device, "heartbeat"), 1, timeout=30)
        started = time.monotonic()
        got = watcher.wait_for(event_topic, 1, timeout=15)
        reported = time.monotonic() - started
        problems = [json.loads(p) for p in got if json.loads(p)["type"] == "scene.problem"]
        assert problems and problems[0]["data"]["condition"] in ("covered", "dark")
        assert reported < 2.0 + 3.0  # configured 2 s, plus a frame period and a heartbeat

        def covered_in_heartbeat() -> bool:
            beats = [json.loads(p) for p in watcher.received(contract.topic(device, "heartbeat"))]
            return any("covered" in b.get("scene", []) for b in beats)

        wait_for(covered_in_heartbeat, 10, 0.1, "covered in a heartbeat")
        beat = json.loads(watcher.received(contract.topic(device, "heartbeat"))[-1])
        assert beat["brightness"] < 25 and beat["outbox"] >= 0 and "invokes" in beat
        # a dark, grey view: a lighting mode, said apart from the problem (issue 17)
        assert beat["light"] in ("low_light", "ir") and isinstance(beat["unreliable"], list)
    finally:
        agent.stop()
        watcher.close()


def test_server_stores_each_event_id_once(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    registry = Registry(make_sessionmaker(engine))
    body = {
        "v": 1,
        "id": "cam-dup-1",
        "ts": 1.8e9,
        "seq": 0,
        "event_id": "cam-dup-1-ab-0",
        "type": "track.new",
        "data": {"track": 1},
    }
    other = dict(body, seq=1, event_id="cam-dup-1-ab-1")
    first = registry.apply(
        [Accepted("cam-dup-1", "event", body, 1.0)] * 2
        + [Accepted("cam-dup-1", "event", other, 1.0)]
    )
    assert first.events == 2 and first.duplicates == 1
    second = registry.apply([Accepted("cam-dup-1", "event", body, 2.0)])
    assert second.events == 0 and second.duplicates == 1
    from fleet_server.ingest.events import Event

    with make_sessionmaker(engine)() as db:
        assert db.query(Event).count() == 2
    engine.dispose()
