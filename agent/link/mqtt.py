"""The MQTT link: the only module that touches paho.

A supervisor thread owns the connection. Each attempt builds a fresh paho client (so renewed
certificate files are read again), sets the last will (retained status "offline"), connects
with TLS and the device certificate, and runs paho's network thread until the connection
drops; then it waits a backoff delay with full jitter (``contract.reconnect_delay``) and
tries again. paho's own reconnect is switched off: it has no jitter.

After every CONNACK the link publishes a retained status "online" and subscribes to the
device's ``cmd/req``, ``config/desired`` and ``update/desired``. ``publish`` may be called
from any thread.
``close`` publishes a retained status "offline" with a reason, waits for the broker's
acknowledgement, and disconnects normally (so the broker drops the will).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSettings
from agent.errors import AgentError, LinkError, PayloadError
from agent.link.backoff import Backoff
from firmware import contract

log = logging.getLogger(__name__)

DEVICE_KIND = "agent"
WILL_REASON = "connection_lost"
# paho keeps unsent QoS 1 messages in memory; bound them.
_MAX_QUEUED = 100
_SUBSCRIBE_KINDS = ("cmd_req", "config_desired", "update_desired", "receipt")

MessageHandler = Callable[[str, dict[str, Any]], None]
# (generation, mid, ok): the broker acknowledged (PUBACK) message ``mid`` published on the
# connection ``generation``; ok is False when it refused it in the PUBACK's reason code.
PublishedHandler = Callable[[int, int, bool], None]
# a receipt from the server (docs/protocol.md): its decoded body, on paho's thread
ReceiptHandler = Callable[[dict[str, Any]], None]

_PAHO_LOG = logging.getLogger("agent.link.mqtt.paho")


class _PahoNoise(logging.Filter):
    """Drops paho's repeated 'Client is not connected' error after every lost connection
    (the link logs the loss itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


def _now() -> float:
    return round(time.time(), 3)


def status_message(
    device_id: str, state: str, reason: str | None = None, ts: float | None = None
) -> tuple[str, bytes]:
    """Topic and payload of a status message (retained, QoS 1 by the contract).

    The online status of a connection carries the same ``ts`` as that connection's will,
    so the server still applies the will after the online (docs/protocol.md, Last will).
    """
    body: dict[str, object] = {"state": state, "kind": DEVICE_KIND}
    if reason is not None:
        body["reason"] = reason
    try:
        stamp = _now() if ts is None else ts
        topic, payload, _qos, _retain = contract.encode("status", device_id, body, stamp)
    except contract.ProtocolError as exc:
        raise PayloadError(str(exc)) from exc
    return topic, payload


class Link:
    def __init__(
        self,
        device_id: str,
        settings: MqttSettings,
        *,
        on_message: MessageHandler | None = None,
        rnd: Callable[[], float] | None = None,
    ) -> None:
        self.device_id = contract.check_device_id(device_id)
        self.settings = settings
        self._on_message = on_message
        self._backoff = Backoff(
            settings.reconnect_base_s,
            settings.reconnect_cap_s,
            settings.reconnect_first_spread_s,
            rnd,
        )
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._dropped = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._close_reason = "shutdown"
        self._thread: threading.Thread | None = None
        self._connects = 0
        self._session_ts = 0.0  # ts of the current connection's will and online status
        self._generation = 0  # counts the clients made; acks name the one they came on
        self.on_published: PublishedHandler | None = None
        self.on_receipt: ReceiptHandler | None = None
        if not any(isinstance(f, _PahoNoise) for f in _PAHO_LOG.filters):
            _PAHO_LOG.addFilter(_PahoNoise())

    # ---------------------------------------------------------------- public
    @property
    def connects(self) -> int:
        """Successful connections (CONNACK accepted) since start."""
        with self._lock:
            return self._connects

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Check the TLS files, then connect in the background (never blocks on the broker)."""
        if self._thread is not None:
            raise LinkError("link already started")
        self._check_tls_files()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def publish(self, kind: str, body: dict[str, object]) -> bool:
        """Encode with the contract and hand to paho (QoS 1). False when not connected."""
        try:
            topic, payload, qos, retain = contract.encode(kind, self.device_id, body, _now())
        except contract.ProtocolError as exc:
            raise PayloadError(f"{kind} does not fit the contract: {exc}") from exc
        with self._lock:
            client = self._client
        if client is None or not self._connected.is_set():
            return False
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("publish of %s not accepted: %s", kind, mqtt.error_string(info.rc))
            return False
        return True

    def publish_raw(
        self, topic: str, payload: bytes, qos: int, retain: bool
    ) -> tuple[int, int] | None:
        """Hand an already encoded message to paho; (generation, mid), or None when not
        connected or paho refused it. ``on_published`` later tells its PUBACK."""
        with self._lock:
            client = self._client
            generation = self._generation
        if client is None or not self._connected.is_set():
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("publish on %s not accepted: %s", topic, mqtt.error_string(info.rc))
            return None
        return generation, info.mid

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def close(self, reason: str = "shutdown", timeout: float = 10.0) -> None:
        """Say offline (retained, with ``reason``), disconnect, stop the thread."""
        self._close_reason = reason
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("MQTT link did not stop within %.1fs", timeout)

    # ---------------------------------------------------------------- supervisor
    def _run(self) -> None:
        first = True
        while not self._closing.is_set():
            if not first:
                delay = self._backoff.next_delay()
                log.info("reconnecting in %.2fs (attempt %d)", delay, self._backoff.attempt)
                if self._closing.wait(delay):
                    break
            first = False
            client = self._connect()
            if client is None:
                continue
            self._serve()
            if self._closing.is_set():
                self._shutdown(client)
                break
            self._teardown(client)

    def _connect(self) -> mqtt.Client | None:
        s = self.settings
        try:
            client = self._new_client()
        except LinkError as exc:
            log.error("%s", exc)
            return None
        self._dropped.clear()
        self._wake.clear()
        try:
            client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
        except OSError as exc:  # refused, unreachable, timeout, TLS handshake (ssl.SSLError)
            log.warning("connection to %s:%d not established: %s", s.host, s.port, exc)
            return None
        with self._lock:
            self._client = client
        client.loop_start()
        return client

    def _serve(self) -> None:
        """Block until the connection drops, no CONNACK arrives in time, or close()."""
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not self._closing.is_set() and not self._dropped.is_set():
            if not self._connected.is_set() and time.monotonic() > deadline:
                log.warning(
                    "connection to %s:%d not established: no CONNACK within %.1fs",
                    self.settings.host,
                    self.settings.port,
                    self.settings.connect_timeout_s,
                )
                return
            self._wake.wait(0.5)
            self._wake.clear()

    def _teardown(self, client: mqtt.Client) -> None:
        with self._lock:
            self._client = None
        self._connected.clear()
        client.disconnect()
        client.loop_stop()

    def _shutdown(self, client: mqtt.Client) -> None:
        reason = self._close_reason
        if self._connected.is_set():
            try:
                topic, payload = status_message(self.device_id, "offline", reason)
                info = client.publish(topic, payload, qos=1, retain=True)
                info.wait_for_publish(timeout=self.settings.connect_timeout_s)
                if info.is_published():
                    log.info("status offline (%s) published", reason)
                else:
                    log.warning("status offline not acknowledged in time")
            except (ValueError, RuntimeError, PayloadError) as exc:
                log.warning("could not publish status offline: %s", exc)
        self._teardown(client)

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        try:
            client.tls_set(ca_certs=str(s.ca), certfile=str(s.cert), keyfile=str(s.key))
        except OSError as exc:  # includes ssl.SSLError
            raise LinkError(f"cannot load TLS files: {exc}") from exc
        client.connect_timeout = s.connect_timeout_s
        with self._lock:
            self._generation += 1
            generation = self._generation

        def on_publish(
            _c: mqtt.Client,
            _u: Any,
            mid: int,
            reason_code: ReasonCode,
            _p: Properties | None,
        ) -> None:
            handler = self.on_published
            if handler is not None:
                handler(generation, mid, not reason_code.is_failure)

        client.on_publish = on_publish
        client.max_queued_messages_set(_MAX_QUEUED)
        # the will's ts is the time of this attempt: the broker sends it as it is, and the
        # online status of this connection repeats it
        self._session_ts = _now()
        topic, payload = status_message(self.device_id, "offline", WILL_REASON, self._session_ts)
        client.will_set(topic, payload, qos=1, retain=True)
        client.enable_logger(_PAHO_LOG)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message_cb
        client.on_subscribe = self._on_subscribe
        return client

    def _check_tls_files(self) -> None:
        s = self.settings
        try:
            ctx = ssl.create_default_context(cafile=str(s.ca))
            ctx.load_cert_chain(str(s.cert), str(s.key))
        except OSError as exc:  # missing file, unreadable, not PEM, key does not match
            raise LinkError(
                f"cannot load TLS files (ca {s.ca}, cert {s.cert}, key {s.key}): {exc}"
            ) from exc

    # ---------------------------------------------------------------- paho callbacks
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning(
                "connection to %s:%d not established: broker refused it (%s)",
                self.settings.host,
                self.settings.port,
                reason_code,
            )
            return
        with self._lock:
            self._connects += 1
        self._backoff.reset()
        self._connected.set()
        log.info("connected to %s:%d as %s", self.settings.host, self.settings.port, self.device_id)
        topic, payload = status_message(self.device_id, "online", ts=self._session_ts)
        client.publish(topic, payload, qos=1, retain=True)
        client.subscribe([(contract.topic(self.device_id, kind), 1) for kind in _SUBSCRIBE_KINDS])

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._dropped.set()
        self._wake.set()
        if self._closing.is_set():
            log.info("disconnected")
        elif was_connected:
            log.warning("connection lost: %s", reason_code)
        else:
            log.warning(
                "connection to %s:%d not established: closed before CONNACK (%s; a refused "
                "client certificate shows as a TLS error just above)",
                self.settings.host,
                self.settings.port,
                reason_code,
            )

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        for kind, rc in zip(_SUBSCRIBE_KINDS, reason_codes, strict=False):
            if rc.is_failure:
                log.warning("subscription to %s refused: %s", kind, rc)

    def _on_message_cb(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained message cleared (e.g. update/desired when done)
            log.debug("empty message on %s: nothing to do", msg.topic)
            return
        try:
            device_id, kind, body = contract.decode(msg.topic, msg.payload)
        except contract.ProtocolError as exc:
            log.warning("dropped message on %s: %s", msg.topic, exc)
            return
        if device_id != self.device_id:
            log.warning("dropped message for another device on %s", msg.topic)
            return
        if kind == "receipt":
            handler = self.on_receipt
            if handler is not None:
                handler(body)
            return
        if self._on_message is None:
            return
        try:
            self._on_message(kind, body)
        except AgentError as exc:
            log.error("handling %s failed: %s", kind, exc)
