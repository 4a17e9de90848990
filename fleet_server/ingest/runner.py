"""MQTT ingest: a lean MQTT v5 client in a shared subscription, and a batching DB writer.

Every message goes through the contract first. A refused message is logged with its
reason, counted, acknowledged and dropped. An accepted one waits in a bounded buffer for
the writer, which stores a batch in one transaction and only then sends the QoS 1 PUBACKs
(manual acks): a server crash before the commit leaves the message with the broker, which
delivers it again, and the registry recognises the repeat.

The MQTT side is ``mqtt5_client.Mqtt5Client`` (one TLS socket, many PUBLISH packets parsed
per read, PUBACKs of a whole batch in one write), not paho: paho's per-message work was
about half of a worker's CPU under load (see bench/bench_ingest.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from firmware import contract
from fleet_server.commands.store import Outgoing
from fleet_server.health.notify import Notifier
from fleet_server.identity import server_identity
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ingest import gate
from fleet_server.ingest.budget import Budget
from fleet_server.ingest.client import ClientSettings, Mqtt5Client
from fleet_server.ingest.codec import MqttError, Publish
from fleet_server.ingest.flood import FloodWatch
from fleet_server.ingest.quarantine import Quarantine
from fleet_server.ingest.registry import Accepted, Registry
from fleet_server.ingest.safestore import SafeStore
from fleet_server.ingest.settings import IngestSettings, MqttSettings
from fleet_server.ingest.supervisor import Supervisor, Watched
from fleet_server.metrics import Metrics
from fleet_server.receipts import actions as receipts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Item:
    msg: Accepted
    mid: int  # packet id; 0 for QoS 0
    generation: int  # connection the message came on; acks never cross connections


class _Buffer:
    """Accepted messages between the MQTT thread and the writer, bounded in count: a full
    buffer blocks the MQTT thread, which stops reading, and the broker queues for us."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self.unfinished = 0  # taken in, not yet stored and acknowledged

    def put_many(self, items: list[_Item], stop: threading.Event) -> None:
        with self._cond:
            while self._items and len(self._items) + len(items) > self.size:
                if stop.is_set():
                    return
                self._cond.wait(0.5)
            self._items.extend(items)
            self.unfinished += len(items)
            self._cond.notify_all()

    def take(self, most: int, linger_s: float, first_wait_s: float = 0.2) -> list[_Item]:
        """Up to ``most`` items: waits for the first, then up to ``linger_s`` for more."""
        with self._cond:
            if not self._items:
                self._cond.wait(first_wait_s)
                if not self._items:
                    return []
            until = time.monotonic() + linger_s
            while len(self._items) < most:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(most, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self._cond.notify_all()
            return batch

    def done(self, n: int) -> None:
        with self._cond:
            self.unfinished -= n

    def __len__(self) -> int:
        return len(self._items)


class Ingest:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        ca: CertificateAuthority,
        mqtt_settings: MqttSettings,
        settings: IngestSettings,
        notifier: Notifier | None = None,
        *,
        subscribe: bool = True,
        send_receipts: bool = True,
        quarantine: Quarantine | None = None,
    ) -> None:
        """``subscribe=False``: a connection that only publishes (commands, config, alerts)
        and stores nothing: the API process when ingest workers run apart from it.
        ``send_receipts``: tell devices which events are stored after each commit."""
        self.registry = registry
        self.subscribe = subscribe
        self.send_receipts = send_receipts
        self.notifier = notifier
        if notifier is not None:
            notifier.publish = self._publish_alert
        self.metrics = metrics
        self.cfg = mqtt_settings
        self.settings = settings
        self._buffer = _Buffer(settings.queue_size)
        self.taken = 0  # messages accepted from the broker since start
        self._stop = threading.Event()
        self.safe = SafeStore(registry, metrics, self._stop)
        self.refusals = gate.RefusalCounts()
        self.budget = Budget(settings.budget)
        self.quarantine = quarantine or Quarantine(registry.sessions)
        self.quarantine.stats = lambda: {
            "flooding": self.budget.flooding(),
            "refused": self.refusals.all(),
        }
        self.flood = FloodWatch(self.budget, registry.sessions, self.quarantine,
                                notifier.send if notifier is not None else None)  # fmt: skip
        self.refusal_log = gate.RefusalLog(settings.refusal_log_interval_s,
                                           counter=metrics.refusal_log_lines)  # fmt: skip
        self.safe.refusal_log = self.refusal_log  # dead letters are logged at the same rate
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._pending: list[_Item] = []  # the batch the writer holds (a new writer takes it)
        self._down_since: float | None = time.monotonic()  # the MQTT link; None while up
        self.supervisor = Supervisor(
            metrics, max_restarts=settings.thread_restarts_max, window_s=60.0
        )
        # its own certificate, CN _<client id>: the broker makes the CN the client id
        tls = server_identity.client_context(ca, mqtt_settings.client_id)
        self._renewer = server_identity.Renewer(ca, mqtt_settings.client_id, tls, 30.0)
        self.client = Mqtt5Client(
            ClientSettings(
                host=mqtt_settings.host,
                port=mqtt_settings.port,
                client_id=mqtt_settings.client_id,
                keepalive_s=mqtt_settings.keepalive_s,
                session_expiry_s=mqtt_settings.session_expiry_s,
                subscriptions=(
                    contract.server_subscriptions(shared=mqtt_settings.shared) if subscribe else ()
                ),
                # back within seconds of a broker restart: Mosquitto 2.0 does not restore
                # shared subscriptions, so what devices publish before we subscribe again
                # reaches no one
                reconnect_min_s=1.0,
                reconnect_max_s=2.0,
            ),
            tls,
            self._on_messages,
            self._on_state,
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._writer.start()
        self.client.start()
        self._renewer.start()  # the worker's own certificate, renewed when due
        self.supervisor.watch(Watched("ingest-writer", self._write_loop, self._writer))
        io = Watched("mqtt5-io", self.client.revive, alive=self.client.alive)
        self.supervisor.watch(io)
        self.supervisor.ticks.append(self.refusal_log.flush)
        self.supervisor.ticks.append(self.quarantine.refresh)
        if self.subscribe:
            self.supervisor.ticks.append(self.flood.tick)
        self.supervisor.start()

    def supervise(self, *threads: threading.Thread) -> None:
        """Watch more of the process's loops (started already): restarted if they die."""
        for t in threads:
            self.supervisor.watch(Watched(t.name, t.run, t))

    def problem(self, link_down_s: float) -> str | None:
        """Why this process is not healthy (``/healthz`` 503), or None."""
        if self.supervisor.gave_up is not None:
            return self.supervisor.gave_up
        since = self._down_since
        if since is not None and time.monotonic() - since > link_down_s:
            return f"MQTT link down for {time.monotonic() - since:.0f}s"
        return None

    def wait_connected(self, timeout: float) -> bool:
        return self.client.connected.wait(timeout)

    def stop(self, drain_s: float = 10.0, *, leave: bool | None = None) -> None:
        """Stop; keep the broker session, or with ``leave`` end it (``None``: as
        ``keep_session_on_stop`` says).

        A clean stop (SIGTERM: a restart, an upgrade) stores and acknowledges what already
        arrived and disconnects keeping its session (``session_expiry_s``): the broker
        goes on queueing this worker's share of the group until it returns, and delivers
        again what it sent and we did not acknowledge.

        ``leave`` (scaling down): unsubscribe first (the broker gives this worker's share
        to the others from then on), store and acknowledge what already arrived, then
        disconnect with a session expiry of 0, so that no session is left in the group.
        """
        if leave is None:
            leave = not self.cfg.keep_session_on_stop
        if not leave:
            self._end_writer(drain_s + 10)  # it stores what the buffer holds, then ends
            self.client.stop(session_expiry_s=None)
            return
        if self.subscribe and self.client.connected.is_set():
            filters = [t for t, _q in contract.server_subscriptions(shared=self.cfg.shared)]
            self.client.unsubscribe(filters)
            self.client.unsubscribed.wait(5.0)
            until = time.monotonic() + drain_s
            while time.monotonic() < until and self._buffer.unfinished:
                time.sleep(0.02)
        self._end_writer(10.0)
        self.client.stop(session_expiry_s=0)

    def _end_writer(self, timeout: float) -> None:
        self._renewer.stopped.set()
        self.supervisor.stopped.set()
        self._stop.set()
        for w in self.supervisor.watched:
            if w.name == "ingest-writer" and w.thread is not None and w.thread.is_alive():
                w.thread.join(timeout=timeout)

    def send(self, out: Outgoing) -> None:
        """Publish a server message (command, desired config) on the ingest connection.

        It waits in the client while the broker is away and goes out on reconnect.
        """
        self.client.publish(out.topic, out.payload, out.qos, out.retain,
                            out.response_topic, out.correlation)  # fmt: skip

    def _publish_alert(self, payload: bytes) -> None:
        self.client.publish(contract.ALERTS_TOPIC, payload, 1)

    # ---------------------------------------------------------------- MQTT thread
    def _on_state(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)
        if up:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.monotonic()
        if not up and not self._stop.is_set():
            log.warning("ingest lost the broker")

    def _on_messages(self, messages: list[Publish], generation: int) -> None:
        received_at = time.time()
        items: list[_Item] = []
        refused: list[int] = []
        kinds: Counter[str] = Counter()
        decode = gate.decode  # the one gate: every failure a refusal, never an exception
        now = time.monotonic()
        for m in messages:
            # quarantine and budget first, from the topic alone: a flood costs no parsing
            early = gate.precheck(m.topic, self.quarantine.has, self.budget.take, now)
            verdict = decode(m.topic, m.payload) if early is None else early
            if isinstance(verdict, gate.Refused):
                self._refuse(verdict, len(m.payload))
                if m.qos:
                    refused.append(m.packet_id)
                continue
            device_id, kind, body = verdict
            kinds[kind] += 1
            msg = Accepted(device_id, kind, body, received_at, m.payload)
            items.append(_Item(msg, m.packet_id, generation))
        for kind, n in kinds.items():
            self.metrics.received.labels(kind=kind).inc(n)
        self.client.ack(generation, refused)
        self.taken += len(items)
        if items:
            self._buffer.put_many(items, self._stop)

    def _receipts(self, batch: list[_Item], ts: float) -> None:
        """After the commit: one receipt per device of the batch (docs/protocol.md)."""
        for topic, payload in receipts.messages([item.msg for item in batch], ts):
            try:
                self.client.publish(topic, payload, 1)
            except MqttError as exc:  # too much waits for the broker: the device resends
                self.metrics.receipts_unsent.inc()
                log.warning("receipt on %s not sent: %s", topic, exc)
            else:
                self.metrics.receipts_sent.inc()

    def _refuse(self, refused: gate.Refused, size: int) -> None:
        self.metrics.rejected.labels(reason=refused.reason).inc()
        self.refusals.add(refused.device_id, refused.reason)
        self.refusal_log.note(refused, size)

    # ---------------------------------------------------------------- writer
    def _write_loop(self) -> None:
        # a writer started again by the supervisor first stores the batch its predecessor
        # held when it died (taken from the buffer, not yet stored and acknowledged)
        while not (self._stop.is_set() and not len(self._buffer) and not self._pending):
            batch = self._pending or self._buffer.take(
                self.settings.batch_size, self.settings.batch_ms / 1000
            )
            self._pending = batch
            self.metrics.queue_depth.set(len(self._buffer))
            if batch:
                self._store(batch)  # returns once stored and acked, or when stopping
                self._pending = []
                self._buffer.done(len(batch))

    def _store(self, batch: list[_Item]) -> None:
        # the DB away: kept and retried; a message at fault: set aside (safestore.py)
        done = self.safe.apply([item.msg for item in batch])
        if done is None:
            return  # stopping; not acked: the broker keeps them for the next start
        stats, set_aside = done
        committed = time.time()
        by_generation: dict[int, list[int]] = {}
        kinds: Counter[str] = Counter()
        aside = set(set_aside)
        for n, item in enumerate(batch):
            if item.mid:  # stored or set aside: acknowledged either way
                by_generation.setdefault(item.generation, []).append(item.mid)
            if n in aside:
                continue
            kinds[item.msg.kind] += 1
            if item.msg.kind == "heartbeat":
                self.metrics.lag.observe(max(0.0, committed - float(item.msg.body["ts"])))
        for generation, mids in by_generation.items():
            self.client.ack(generation, mids)
        if self.send_receipts:
            self._receipts(batch, committed)
        for kind, n in kinds.items():
            self.metrics.stored.labels(kind=kind).inc(n)
        self.metrics.duplicates.inc(stats.duplicates)
        if self.notifier is not None and stats.alerts:
            self.notifier.send(stats.alerts)
        for dev in stats.went_online:
            log.info("device %s online", dev)
        for dev in stats.went_offline:
            log.info("device %s offline", dev)
