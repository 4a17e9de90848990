"""A lean MQTT v5 client for the server's ingest connection: one TLS socket, one I/O thread.

The I/O thread alone reads and writes the socket (an SSL object is not safe to use from two
threads at once). It reads as much as one ``recv`` gives, parses every PUBLISH in it and
hands them to ``on_messages`` as one list, so a busy connection costs one call per chunk,
not one per message. Other threads queue what they want to send (``ack``, ``publish``) and
wake the I/O thread through a socket pair.

QoS 1 messages are acknowledged only when the caller says so (``ack``), after it stored
them; acknowledgements carry the connection ``generation`` they belong to and are dropped
when that connection is gone (the broker sends those messages again on the next one).
Messages this client publishes with QoS 1 are kept until their PUBACK and sent again (DUP)
after a reconnect; while the broker is away they wait in a bounded queue.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleet_server.ingest import codec as mqtt5
from fleet_server.ingest.codec import Ack, ConnAck, Disconnect, MqttError, Publish, RefusedError

log = logging.getLogger(__name__)

_RECV = 1 << 18  # bytes per recv: a few thousand heartbeats


@dataclass(frozen=True)
class ClientSettings:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 3600  # the broker keeps our session (and queues) this long
    subscriptions: Sequence[tuple[str, int]] = ()
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 2.0
    connect_timeout_s: float = 10.0
    max_pending: int = 100_000  # outgoing messages kept while the broker is away


@dataclass
class _Out:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None
    correlation: bytes | None
    message_expiry_s: int | None


# (messages, connection generation): called on the I/O thread; may block (backpressure)
OnMessages = Callable[[list[Publish], int], None]


class Mqtt5Client:
    def __init__(
        self,
        settings: ClientSettings,
        tls: ssl.SSLContext,
        on_messages: OnMessages,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.s = settings
        self.tls = tls
        self.on_messages = on_messages
        self.on_state = on_state
        self.generation = 0
        self.connected = threading.Event()
        self.unsubscribed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._acks: list[tuple[int, list[int]]] = []  # (generation, packet ids)
        self._outbox: deque[_Out] = deque()
        self._inflight: dict[int, _Out] = {}  # our QoS 1 publishes waiting for PUBACK
        self._next_id = 0
        self._send_quota = 65535  # the broker's Receive Maximum, from its CONNACK
        self._control: list[bytes] = []  # UNSUBSCRIBE, DISCONNECT from other threads
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="mqtt5-io", daemon=True)
        self._sock: ssl.SSLSocket | None = None
        self._final: bytes | None = None

    # ---------------------------------------------------------------- API (any thread)
    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The I/O thread runs (or was asked to stop)."""
        return self._stop.is_set() or self._thread.is_alive()

    def revive(self) -> None:
        """Start the I/O thread again after it died of something unexpected (the
        supervisor's call): a new connection, on which the broker sends again what this
        client had not acknowledged."""
        if self.alive():
            return
        self._thread = threading.Thread(target=self._run, name="mqtt5-io", daemon=True)
        self._thread.start()

    def ack(self, generation: int, packet_ids: Sequence[int]) -> None:
        if packet_ids:
            with self._lock:
                self._acks.append((generation, list(packet_ids)))
            self._wake()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        message_expiry_s: int | None = None,
    ) -> None:
        out = _Out(topic, payload, qos, retain, response_topic, correlation, message_expiry_s)
        mqtt5.publish(topic, payload, qos, retain, 1 if qos else 0, False, response_topic,
                      correlation, message_expiry_s)  # fmt: skip  # fails here, not later
        with self._lock:
            if len(self._outbox) >= self.s.max_pending:
                raise MqttError(f"{len(self._outbox)} messages wait for the broker already")
            self._outbox.append(out)
        self._wake()

    def unsubscribe(self, filters: Sequence[str]) -> None:
        """Leave the filters; ``unsubscribed`` is set on the UNSUBACK."""
        self.unsubscribed.clear()
        with self._lock:
            self._control.append(mqtt5.unsubscribe(self._packet_id(), filters))
        self._wake()

    def stop(self, session_expiry_s: int | None = 0, timeout: float = 5.0) -> None:
        """Send DISCONNECT (with the session expiry given) and end the I/O thread."""
        with self._lock:
            self._final = mqtt5.disconnect(0, session_expiry_s)
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    # ---------------------------------------------------------------- I/O thread
    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (buffer full), or closing
            self._wake_w.send(b"\x00")

    def _packet_id(self) -> int:
        """Next free packet id (caller holds the lock)."""
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight:
                return self._next_id
        raise MqttError("no free packet id")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except (OSError, MqttError) as exc:
                if not self._stop.is_set():
                    log.warning("ingest connection to %s:%s lost: %s", self.s.host, self.s.port,
                                exc)  # fmt: skip
            finally:
                self._close()
            if self._stop.wait(random.uniform(self.s.reconnect_min_s, self.s.reconnect_max_s)):
                break

    def _close(self) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if was and self.on_state is not None:
            self.on_state(False)

    def _connect(self) -> tuple[ssl.SSLSocket, mqtt5.Parser, ConnAck, list[mqtt5.Packet]]:
        raw = socket.create_connection((self.s.host, self.s.port), self.s.connect_timeout_s)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.tls.wrap_socket(raw, server_hostname=self.s.host)
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        self._sock = sock
        sock.sendall(mqtt5.connect(self.s.client_id, self.s.keepalive_s, False,
                                   self.s.session_expiry_s))  # fmt: skip
        parser = mqtt5.Parser()
        deadline = time.monotonic() + self.s.connect_timeout_s
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = sock.recv(_RECV)
            if not data:
                raise MqttError("broker closed the connection before CONNACK")
            packets = parser.feed(data)
            if packets:
                break
        first = packets[0]
        if not isinstance(first, ConnAck):
            raise mqtt5.RemoteProtocolError(f"expected CONNACK, got {type(first).__name__}")
        if first.reason >= 0x80:
            raise RefusedError("CONNECT", first.reason)
        # anything after the CONNACK in the same read is for the main loop
        return sock, parser, first, packets[1:]

    def _session(self) -> None:
        sock, parser, connack, pending = self._connect()
        keepalive = float(connack.properties.get(mqtt5.P_SERVER_KEEPALIVE, self.s.keepalive_s))
        self.generation += 1
        generation = self.generation
        # the broker takes at most this many of our QoS 1 publishes unacknowledged; more
        # and it disconnects us (MQTT v5 Receive Maximum, 3.3.4)
        self._send_quota = int(connack.properties.get(mqtt5.P_RECEIVE_MAXIMUM, 65535))
        with self._lock:
            self._acks.clear()  # acks of an older connection mean nothing on this one
            keep = sorted(self._inflight.items())
            # beyond the broker's window, go back to the queue (front, in order) with new ids
            for _pid, o in reversed(keep[self._send_quota :]):
                self._outbox.appendleft(o)
            self._inflight = dict(keep[: self._send_quota])  # in packet id order
            sub_id = self._packet_id()
            resend = [
                self._encode(o, pid, connack.session_present) for pid, o in self._inflight.items()
            ]
        if self.s.subscriptions:
            # Mosquitto 2.0 does not keep shared subscriptions in a session: always subscribe
            sock.sendall(mqtt5.subscribe(sub_id, self.s.subscriptions))
        if resend:
            sock.sendall(b"".join(resend))
        self.connected.set()
        if self.on_state is not None:
            self.on_state(True)
        log.info("ingest connected to %s:%s (session present: %s)", self.s.host, self.s.port,
                 connack.session_present)  # fmt: skip
        last_sent = last_heard = time.monotonic()
        while True:
            if pending:
                self._handle(pending, generation, sub_id)
            sent = self._flush(sock, generation)
            now = time.monotonic()
            if sent:
                last_sent = now
            if self._stop.is_set():
                return
            if keepalive and now - last_sent >= keepalive:
                sock.sendall(mqtt5.pingreq())
                last_sent = now
            if keepalive and now - last_heard > 1.5 * keepalive:
                raise MqttError("broker silent for 1.5 keepalive periods")
            data = self._read_available(sock)
            if data:
                last_heard = time.monotonic()  # any packet proves the broker alive
                pending = parser.feed(data)
                continue
            pending = []
            wait = min(1.0, keepalive or 1.0)
            ready, _w, _x = select.select([sock, self._wake_r], [], [], wait)
            if self._wake_r in ready:
                self._drain_wake()

    @staticmethod
    def _read_available(sock: ssl.SSLSocket) -> bytes:
        """Everything readable now, without waiting (up to _RECV bytes). Each TLS record
        (one MQTT packet, often) is one read; reading them all before parsing lets one
        callback take many messages."""
        chunks: list[bytes] = []
        size = 0
        sock.setblocking(False)
        try:
            while size < _RECV:
                data = sock.recv(_RECV)
                if not data:
                    if chunks:
                        break  # the close shows on the next read
                    raise MqttError("broker closed the connection")
                chunks.append(data)
                size += len(data)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        return b"".join(chunks)

    @staticmethod
    def _encode(o: _Out, packet_id: int, dup: bool) -> bytes:
        return mqtt5.publish(o.topic, o.payload, o.qos, o.retain, packet_id, dup,
                             o.response_topic, o.correlation, o.message_expiry_s)  # fmt: skip

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _handle(self, packets: list[mqtt5.Packet], generation: int, sub_id: int) -> None:
        messages: list[Publish] = []
        for p in packets:
            if isinstance(p, Publish):
                messages.append(p)
            elif isinstance(p, Ack):
                self._on_ack(p, sub_id)
            elif isinstance(p, Disconnect):
                raise MqttError(f"broker sent DISCONNECT, reason 0x{p.reason:02x}")
            elif isinstance(p, ConnAck):
                raise mqtt5.RemoteProtocolError("second CONNACK")
        if messages:
            self.on_messages(messages, generation)

    def _on_ack(self, ack: Ack, sub_id: int) -> None:
        if ack.kind == mqtt5.PUBACK:
            with self._lock:
                self._inflight.pop(ack.packet_id, None)
            if ack.reasons[0] >= 0x80:
                log.warning("broker refused a server publish: reason 0x%02x", ack.reasons[0])
        elif ack.kind == mqtt5.SUBACK:
            bad = [r for r in ack.reasons if r >= 0x80]
            if bad:
                raise RefusedError("SUBSCRIBE", bad[0])
        elif ack.kind == mqtt5.UNSUBACK:
            self.unsubscribed.set()

    def _flush(self, sock: ssl.SSLSocket, generation: int) -> bool:
        """Send queued acks, control packets and publishes; True when something went."""
        with self._lock:
            acks, self._acks = self._acks, []
            control, self._control = self._control, []
            outs: list[bytes] = []
            while self._outbox and (
                not self._outbox[0].qos or len(self._inflight) < self._send_quota
            ):
                o = self._outbox.popleft()
                pid = 0
                if o.qos:
                    pid = self._packet_id()
                    self._inflight[pid] = o
                outs.append(self._encode(o, pid, False))
            final = self._final if self._stop.is_set() else None
        ids = [pid for gen, pids in acks if gen == generation for pid in pids]
        data = mqtt5.pubacks(ids) + b"".join(control) + b"".join(outs) + (final or b"")
        if data:
            sock.settimeout(self.s.connect_timeout_s)  # blocking, bounded
            sock.sendall(data)
        return bool(data)
