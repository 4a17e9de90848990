"""MQTT ingest: a paho MQTT v5 client in a shared subscription, and a batching DB writer.

Every message goes through the contract first. A refused message is logged with its
reason, counted, acknowledged and dropped. An accepted one waits in a bounded queue for the
writer, which stores a batch in one transaction and only then sends the QoS 1 PUBACKs
(manual acks): a server crash before the commit leaves the message with the broker, which
delivers it again, and the registry recognises the repeat.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.exc import SQLAlchemyError

from firmware import contract
from fleet_server.ca import CertificateAuthority
from fleet_server.commands import Outgoing
from fleet_server.config import IngestSettings, MqttSettings
from fleet_server.metrics import Metrics
from fleet_server.notify import Notifier
from fleet_server.registry import Accepted, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    msg: Accepted
    mid: int
    qos: int
    generation: int  # connection the message came on; acks never cross connections


class Ingest:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        ca: CertificateAuthority,
        mqtt_settings: MqttSettings,
        settings: IngestSettings,
        notifier: Notifier | None = None,
    ) -> None:
        self.registry = registry
        self.notifier = notifier
        if notifier is not None:
            notifier.publish = self._publish_alert
        self.metrics = metrics
        self.cfg = mqtt_settings
        self.settings = settings
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self._generation = 0
        self._connected = threading.Event()
        self._unsubscribed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt_settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self.client.tls_set(
            ca_certs=str(ca.root_cert_path),
            certfile=str(ca.server_cert_path),
            keyfile=str(ca.server_key_path),
        )
        self.client.max_queued_messages_set(0)
        # back within seconds of a broker restart: Mosquitto 2.0 does not restore shared
        # subscriptions, so what devices publish before we subscribe again reaches no one
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_unsubscribe = lambda *_args: self._unsubscribed.set()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        self._writer.start()
        self.client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, drain_s: float = 10.0) -> None:
        """Leave the shared group without losing anything, then end the session.

        Unsubscribe first (the broker gives this worker's share to the others from then
        on), store and acknowledge what already arrived, then disconnect with a session
        expiry of 0: a worker that stopped cleanly must not keep a session in the group,
        where the broker would go on queueing a share of the fleet's messages for it. A
        worker that crashes keeps its session (and its share) until it returns or the
        session expires (``session_expiry_s``).
        """
        if self._connected.is_set():
            self._unsubscribed.clear()
            filters = [t for t, _q in contract.server_subscriptions(shared=self.cfg.shared)]
            self.client.unsubscribe(filters)
            self._unsubscribed.wait(5.0)
            until = time.monotonic() + drain_s
            while time.monotonic() < until and self._queue.unfinished_tasks:
                time.sleep(0.02)
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
        self._stop.set()
        self._writer.join(timeout=10)

    def send(self, out: Outgoing) -> None:
        """Publish a server message (command, desired config) on the ingest connection.

        paho queues it while the broker is away and sends it on reconnect.
        """
        props = None
        if out.correlation is not None or out.response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if out.response_topic is not None:
                props.ResponseTopic = out.response_topic
            if out.correlation is not None:
                props.CorrelationData = out.correlation
        self.client.publish(out.topic, out.payload, qos=out.qos, retain=out.retain,
                            properties=props)  # fmt: skip

    def _publish_alert(self, payload: bytes) -> None:
        self.client.publish(contract.ALERTS_TOPIC, payload, qos=1)

    # ---------------------------------------------------------------- paho callbacks
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the server: %s", reason)
            return
        self._generation += 1
        subs = contract.server_subscriptions(shared=self.cfg.shared)
        client.subscribe([(topic, qos) for topic, qos in subs])
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        log.info(
            "ingest connected to %s:%s, subscribed to %d filters",
            self.cfg.host,
            self.cfg.port,
            len(subs),
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stop.is_set():
            log.warning("ingest lost the broker: %s", reason)

    def _on_message(self, client: mqtt.Client, _userdata: object, m: mqtt.MQTTMessage) -> None:
        received_at = time.time()
        try:
            device_id, kind, body = contract.decode(m.topic, m.payload)
        except contract.ProtocolError as exc:
            self.metrics.rejected.labels(reason=exc.reason).inc()
            log.warning("refused message on %r (%d bytes): %s", m.topic, len(m.payload), exc)
            if m.qos > 0:
                client.ack(m.mid, m.qos)
            return
        self.metrics.received.labels(kind=kind).inc()
        item = _Item(Accepted(device_id, kind, body, received_at), m.mid, m.qos, self._generation)
        # blocks when the writer is behind: paho stops reading, the broker queues for us
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # ---------------------------------------------------------------- writer
    def _next_batch(self) -> list[_Item]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        until = time.monotonic() + self.settings.batch_ms / 1000
        while len(batch) < self.settings.batch_size:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            self.metrics.queue_depth.set(self._queue.qsize())
            if batch:
                try:
                    self._store(batch)
                finally:
                    for _ in batch:  # counted as done once stored and acknowledged
                        self._queue.task_done()

    def _store(self, batch: list[_Item]) -> None:
        delay = 0.2
        while True:
            try:
                with self.metrics.batch_seconds.time():
                    stats = self.registry.apply([item.msg for item in batch])
                break
            except SQLAlchemyError:  # the DB is down or locked: keep the batch, retry
                self.metrics.store_errors.inc()
                log.exception("storing a batch of %d failed; retrying in %.1fs", len(batch), delay)
                if self._stop.wait(delay):
                    return  # not acked: the broker keeps them for the next start
                delay = min(delay * 2, 10.0)
        committed = time.time()
        for item in batch:
            self.metrics.stored.labels(kind=item.msg.kind).inc()
            if item.msg.kind == "heartbeat":
                self.metrics.lag.observe(max(0.0, committed - float(item.msg.body["ts"])))
            if item.qos > 0 and item.generation == self._generation:
                self.client.ack(item.mid, item.qos)
        self.metrics.duplicates.inc(stats.duplicates)
        if self.notifier is not None and stats.alerts:
            self.notifier.send(stats.alerts)
        for dev in stats.went_online:
            log.info("device %s online", dev)
        for dev in stats.went_offline:
            log.info("device %s offline", dev)
