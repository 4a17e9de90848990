"""Helpers for the tests that run the real MicroPython node against the real Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.node import NodeProcess
from hil_tests.procs import wait_for
from tests.mqtt_helpers import Client, server_creds

Body = dict[str, Any]


def observer(ca: CertificateAuthority, port: int, device_id: str) -> Client:
    """A fleet-server identity that sees everything the device publishes."""
    obs = Client(port, ca.root_cert_path, *server_creds(ca))
    obs.subscribe(f"{contract.TOPIC_ROOT}/{device_id}/#")
    return obs


class SessionObserver(Client):
    """The server identity with a kept session (MQTT 3.1.1, clean_session false) that
    reconnects by itself: what the device publishes while this observer is away, even
    across a broker restart (persistence on), is kept for it and arrives in order."""

    def __init__(self, ca: CertificateAuthority, port: int, device_id: str, client_id: str):
        self.messages: list[mqtt.MQTTMessage] = []
        self.suback: list[list[int]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        cert, key = server_creds(ca)  # an identity of its own (issue 15)
        self.client.tls_set(ca_certs=str(ca.root_cert_path), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(1, 2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("localhost", port, keepalive=30)
        self.client.loop_start()
        self.subscribe(f"{contract.TOPIC_ROOT}/{device_id}/#")


def bodies(obs: Client, device_id: str, kind: str) -> list[Body]:
    topic = contract.topic(device_id, kind)
    return [contract.decode(topic, p)[2] for p in obs.received(topic)]


def events(obs: Client, device_id: str, kind: str | None = None) -> list[Body]:
    found = bodies(obs, device_id, "event")
    return [e for e in found if kind is None or e["type"] == kind]


def wait_body(
    obs: Client,
    device_id: str,
    kind: str,
    pred: Callable[[Body], bool],
    node: NodeProcess,
    timeout: float = 15,
) -> Body:
    """The first message of ``kind`` that ``pred`` accepts; prints the node's log on failure."""
    found: list[Body] = []

    def seen() -> bool:
        found[:] = [b for b in bodies(obs, device_id, kind) if pred(b)]
        return bool(found)

    try:
        wait_for(seen, timeout, what=f"{kind} of {device_id}")
    except Exception:
        print(node.log_text()[-4000:])
        raise
    return found[0]


def wait_event(
    obs: Client, device_id: str, etype: str, node: NodeProcess, timeout: float = 15
) -> Body:
    return wait_body(obs, device_id, "event", lambda b: b["type"] == etype, node, timeout)


def command(
    obs: Client, device_id: str, cid: str, cmd: str, args: Body | None = None, **extra: Any
) -> None:
    body: Body = {"cid": cid, "cmd": cmd, **extra}
    if args is not None:
        body["args"] = args
    topic, data, _q, _r = contract.encode("cmd_req", device_id, body, time.time())
    obs.publish(topic, data)


def answer(obs: Client, device_id: str, cid: str, node: NodeProcess, timeout: float = 10) -> Body:
    return wait_body(obs, device_id, "cmd_res", lambda b: b["cid"] == cid, node, timeout)


def desire(obs: Client, device_id: str, version: int, config: Body) -> None:
    """Publish a desired config the way the fleet server does: retained, QoS 1."""
    body = {"version": version, "config": config}
    topic, data, _q, retain = contract.encode("config_desired", device_id, body, time.time())
    obs.publish(topic, data, retain=retain)


def clear_retained(obs: Client, device_id: str) -> None:
    obs.publish(contract.topic(device_id, "config_desired"), b"", retain=True)


def no_memory_errors(node: NodeProcess) -> None:
    text = node.log_text()
    assert "MemoryError" not in text, text[-3000:]


def state_json(workdir: Path, name: str) -> Any:
    return json.loads((workdir / "state" / name).read_text())


def started_nodes() -> Iterator[list[NodeProcess]]:
    """For a ``started`` fixture: nodes a test starts, killed at the end whatever happens."""
    nodes: list[NodeProcess] = []
    yield nodes
    for proc in nodes:
        proc.kill()


def start(started: list[NodeProcess], proc: NodeProcess) -> NodeProcess:
    started.append(proc)
    proc.start()
    return proc
