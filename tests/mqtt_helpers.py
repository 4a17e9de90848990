"""Small paho clients for tests: connect with given credentials, collect messages."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.identity import server_identity
from fleet_server.identity.ca import CertificateAuthority


class Client:
    """A connected MQTT v5 client that records what it receives."""

    def __init__(
        self, port: int, root: Path, cert: Path, key: Path, client_id: str = "", clean: bool = True
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.suback: list[list[int]] = []
        self.disconnects = 0  # the broker ended the connection (paho then reconnects)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(ca_certs=str(root), certfile=str(cert), keyfile=str(key))
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("localhost", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnects += 1

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[Any], _p: object
    ) -> None:
        self.suback.append([int(c.value) for c in codes])
        self._subscribed.set()

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [bytes(m.payload) for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(topic)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise TimeoutError(f"{len(self.received(topic))} of {count} messages on {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def server_creds(ca: CertificateAuthority, name: str | None = None) -> tuple[Path, Path]:
    """A server-side identity of its own for a test's observer: the broker makes each
    certificate's CN the client id (issue 15), so two connections must never share one."""
    return server_identity.ensure(ca, name or f"test-{uuid.uuid4().hex[:10]}")
