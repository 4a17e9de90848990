"""The agent against a real TLS Mosquitto: online/heartbeat, will on kill -9, clean offline
on SIGTERM, reconnect after a broker restart, refusal of a foreign certificate.

Each test uses its own device id, so retained statuses on the shared broker never mix.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import AgentSettings
from agent.service import run
from common.settings import dump_toml, load_settings
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_config, agent_process
from hil_tests.images import write_test_images
from hil_tests.procs import Broker, Process, wait_for
from tests.mqtt_helpers import server_creds

Factory = Callable[[str], DeviceCredentials]


class Watcher:
    """The fleet server's identity (may read every device), collecting decoded messages."""

    def __init__(self, ca: CertificateAuthority, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.messages: queue.Queue[tuple[str, dict[str, Any], bool]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any], bool]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        cert, key = server_creds(ca)  # an identity of its own (issue 15)
        self.client.tls_set(ca_certs=str(ca.root_cert_path), certfile=str(cert), keyfile=str(key))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect("localhost", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(f"{contract.TOPIC_ROOT}/{device_id}/#", qos=1)
        assert self._subscribed.wait(5), "watcher subscription not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _id, kind, body = contract.decode(msg.topic, msg.payload)  # raises on a bad message
        self.messages.put((kind, body, bool(msg.retain)))

    def expect(
        self, kind: str, timeout: float, pred: Callable[[dict[str, Any]], bool] = lambda _b: True
    ) -> tuple[dict[str, Any], bool]:
        """The next message of ``kind`` matching ``pred``, with its retain flag."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {kind} for {self.device_id} in {timeout}s; seen: {self.seen}"
                )
            try:
                item = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(item)
            if item[0] == kind and pred(item[1]):
                return item[1], item[2]

    def publish(self, kind: str, body: dict[str, object]) -> None:
        topic, payload, qos, retain = contract.encode(kind, self.device_id, body, time.time())
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watchers() -> Iterator[Callable[[CertificateAuthority, int, str], Watcher]]:
    made: list[Watcher] = []

    def make(ca: CertificateAuthority, port: int, device_id: str) -> Watcher:
        w = Watcher(ca, port, device_id)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture
def procs() -> Iterator[list[Process]]:
    """Processes to stop after the test, whatever happened."""
    started: list[Process] = []
    yield started
    for p in started:
        p.stop(grace=3)


def _online(body: dict[str, Any]) -> bool:
    return bool(body["state"] == "online")


def _offline(body: dict[str, Any]) -> bool:
    return bool(body["state"] == "offline")


def _log_has(p: Process, text: str, count: int = 1) -> Callable[[], bool]:
    return lambda: p.log_text().count(text) >= count


def test_online_heartbeats_and_downlink(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
    procs: list[Process],
) -> None:
    creds = device_factory("edge-online")
    w = watchers(ca, broker.port, creds.device_id)
    write_test_images(tmp_path / "images", 8, 32, 24)
    agent = agent_process(
        creds, broker.port, tmp_path / "agent", heartbeat_s=1, camera_dir=tmp_path / "images"
    )
    procs.append(agent.start())

    status, _ = w.expect("status", 10)
    assert (status["state"], status["kind"]) == ("online", "agent")
    beats = [w.expect("heartbeat", 5)[0] for _ in range(3)]
    assert [b["seq"] for b in beats] == [beats[0]["seq"] + i for i in range(3)]
    last = beats[-1]
    assert last["kind"] == "agent" and last["interval_s"] == 1
    assert last["versions"]["agent"] == metadata.version("camfleet")
    assert set(last["versions"]) >= {"python", "paho"}
    assert 0 <= last["mem_used_pct"] <= 100 and 0 <= last["disk_used_pct"] <= 100
    assert last["camera"] == "ok" and last["frames"] > beats[0]["frames"]
    assert 2.0 <= last["fps"] <= 8.0  # configured 5 fps
    assert last["uptime_s"] > beats[0]["uptime_s"]

    # the online status is retained: a late subscriber gets it from the broker
    late = watchers(ca, broker.port, creds.device_id)
    status, retained = late.expect("status", 5)
    assert status["state"] == "online" and retained

    # the agent reads its own cmd/req and config/desired, and answers both
    w.publish("cmd_req", {"cid": "c-42", "cmd": "ping"})
    res, _r = w.expect("cmd_res", 5, lambda b: b["cid"] == "c-42")
    assert res["ok"] is True and res["result"]["pong"] is True
    w.publish("config_desired", {"version": 3, "config": {"heartbeat_s": 10}})
    rep, _r = w.expect("config_reported", 5, lambda b: b["version"] == 3)
    assert rep["ok"] is True
    assert agent.stop() == 0


def test_kill_9_broker_publishes_will(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
    procs: list[Process],
) -> None:
    creds = device_factory("edge-kill9")
    w = watchers(ca, broker.port, creds.device_id)
    agent = agent_process(creds, broker.port, tmp_path)
    procs.append(agent.start())
    w.expect("status", 10, _online)
    t0 = time.monotonic()
    agent.kill()
    status, _ = w.expect("status", 5, _offline)
    assert time.monotonic() - t0 < 3.0
    assert status["reason"] == "connection_lost" and status["kind"] == "agent"


def test_sigterm_says_offline_and_exits_0(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
    procs: list[Process],
) -> None:
    creds = device_factory("edge-term")
    w = watchers(ca, broker.port, creds.device_id)
    agent = agent_process(creds, broker.port, tmp_path)
    procs.append(agent.start())
    w.expect("status", 10, _online)
    assert agent.stop(grace=10) == 0
    status, _ = w.expect("status", 3, _offline)
    assert status["reason"] == "shutdown"
    # a normal DISCONNECT: the broker must not publish the will afterwards
    with pytest.raises(AssertionError):
        w.expect("status", 1.5)
    late = watchers(ca, broker.port, creds.device_id)
    status, retained = late.expect("status", 5)
    assert retained and (status["state"], status["reason"]) == ("offline", "shutdown")


def test_reconnects_after_broker_restart(
    ca: CertificateAuthority,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
    procs: list[Process],
) -> None:
    creds = device_factory("edge-restart")
    first = Broker(ca, tmp_path / "broker1").start()
    procs.append(first)
    fast = {
        "mqtt": {"reconnect_first_spread_s": 0.3, "reconnect_base_s": 0.2, "reconnect_cap_s": 1.0}
    }
    agent = agent_process(creds, first.port, tmp_path / "agent", heartbeat_s=1, extra=fast)
    procs.append(agent.start())
    w1 = watchers(ca, first.port, creds.device_id)
    w1.expect("status", 10, _online)
    w1.expect("heartbeat", 5)
    first.stop()
    w1.close()
    while not w1.messages.empty():
        w1.seen.append(w1.messages.get())
    before = max(body["seq"] for kind, body, _r in w1.seen if kind == "heartbeat")
    wait_for(_log_has(agent, "connection lost"), 5, what="agent noticing the loss")
    time.sleep(1.0)  # the agent retries against a closed port meanwhile
    second = Broker(ca, tmp_path / "broker2", port=first.port).start()
    procs.append(second)
    t0, restarted_at = time.monotonic(), time.time()
    # a fresh broker with its own (empty) store: only the agent can put this status here
    w2 = watchers(ca, second.port, creds.device_id)
    status, _ = w2.expect("status", 10, _online)
    assert status["ts"] >= restarted_at - 0.5  # said after the restart, not replayed
    after = w2.expect("heartbeat", 5)[0]["seq"]
    assert time.monotonic() - t0 < 6.0
    assert after >= before + 2  # beats missed while the broker was down leave a gap in seq
    log = agent.log_text()
    assert log.count("connected to localhost") == 2
    assert "reconnecting in" in log
    assert agent.alive()


def test_foreign_certificates_are_refused(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
    procs: list[Process],
) -> None:
    other = CertificateAuthority(tmp_path / "other-pki")
    other.init()
    # a device certificate from another CA, while trusting our broker: the broker refuses it
    forged = other.issue_device("edge-foreign", tmp_path / "forged")
    forged = DeviceCredentials(
        forged.device_id, forged.directory, forged.key_pem, forged.cert_pem, ca.root_cert_path
    )
    # our own device certificate, but trusting the other root: the agent refuses the broker
    good = device_factory("edge-badroot")
    misled = DeviceCredentials(
        good.device_id, good.directory, good.key_pem, good.cert_pem, other.root_cert_path
    )
    w_forged = watchers(ca, broker.port, forged.device_id)
    w_misled = watchers(ca, broker.port, misled.device_id)
    a = agent_process(forged, broker.port, tmp_path / "a")
    b = agent_process(misled, broker.port, tmp_path / "b")
    procs.extend([a.start(), b.start()])

    wait_for(_log_has(a, "not established", 2), 10, what="forged agent retrying")
    wait_for(_log_has(b, "certificate verify failed", 2), 10, what="misled agent retrying")
    for agent, watcher in ((a, w_forged), (b, w_misled)):
        assert agent.alive()
        assert "connected to" not in agent.log_text()
        with pytest.raises(AssertionError):
            watcher.expect("status", 0.5)
        assert agent.stop() == 0  # a clean stop even when never connected
    assert "reconnecting in" in a.log_text()


def test_run_in_process_with_synthetic_camera(
    ca: CertificateAuthority,
    broker: Broker,
    device_factory: Factory,
    tmp_path: Path,
    watchers: Callable[..., Watcher],
) -> None:
    creds = device_factory("edge-inproc")
    config = agent_config(
        creds,
        broker.port,
        tmp_path,
        heartbeat_s=1,
        extra={"camera": {"fps": 20.0, "width": 32, "height": 24}},
    )
    (tmp_path / "agent.toml").write_text(dump_toml(config))
    settings = load_settings(AgentSettings, tmp_path / "agent.toml")
    w = watchers(ca, broker.port, creds.device_id)
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop), daemon=True)
    thread.start()
    try:
        w.expect("status", 10, _online)
        beat, _ = w.expect("heartbeat", 5, lambda b: b.get("camera") == "ok")
        assert beat["frames"] > 0 and beat["fps"] > 5
        assert (tmp_path / "state").is_dir()
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    status, _ = w.expect("status", 3, _offline)
    assert status["reason"] == "shutdown"
