# A small MQTT 3.1.1 client for the camfleet node (MicroPython first, CPython for tests).
#
# No MQTT client installs on MicroPython, so the node carries this one. It does what a
# fleet member needs and no more: CONNECT with a last will and a kept session, PUBLISH at
# QoS 0 and 1 (QoS 1 waits for PUBACK; unacknowledged messages are re-sent with DUP after
# a reconnect that keeps the session), SUBSCRIBE with a SUBACK check, PINGREQ when the
# keepalive is due, and a non-blocking ``poll()`` that reads what is there, bounded. An
# incoming PUBLISH larger than max_packet is acknowledged and dropped as it streams in,
# never held (``on_oversized`` reports it): a retained message too big for the node's RAM
# must not make it reconnect forever.
#
# Packets are built and parsed in mqtt_packet.py (tested byte for byte); the client holds
# the socket in ``self.sock`` so a test can put a fake byte stream there. The error classes
# are re-exported here: ``except mqtt.MQTTError`` catches everything the client raises.

import select
import socket

try:
    from micropython import const
except ImportError:  # CPython

    def const(__expr: int) -> int:
        return __expr


try:
    import clock
    import mqtt_packet as pk
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock
    from firmware import mqtt_packet as pk

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

MQTTError = pk.MQTTError
LocalProtocolError = pk.LocalProtocolError
RemoteProtocolError = pk.RemoteProtocolError
PacketTooLarge = pk.PacketTooLarge
NetworkError = pk.NetworkError
TLSError = pk.TLSError
ConnectRefused = pk.ConnectRefused
SubscribeRefused = pk.SubscribeRefused
AckTimeout = pk.AckTimeout

_READ_CHUNK = const(512)  # bytes per socket read
_READS_PER_POLL = const(8)  # bound on the work one poll() does
_EAGAIN = const(11)  # errno.EAGAIN, the same number on every MicroPython port


def _would_block(exc: OSError) -> bool:
    return bool(exc.args) and exc.args[0] == _EAGAIN


class MQTTClient:
    """One MQTT 3.1.1 connection. ``on_message(topic, payload, retain)`` gets PUBLISHes."""

    def __init__(
        self,
        client_id: str,
        server: str,
        port: int = 8883,
        ssl_context: "Any" = None,
        server_hostname: str | None = None,
        keepalive: int = 60,
        clean_session: bool = True,
        max_packet: int = 20480,
        timeout_ms: int = 10000,
    ) -> None:
        self.client_id = client_id
        self.server = server
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or server
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.max_packet = max_packet
        self.timeout_ms = timeout_ms
        self.on_message: "Callable[[str, bytes, bool], None] | None" = None
        # called with (topic, size) for a PUBLISH over max_packet: acknowledged, dropped
        self.on_oversized: "Callable[[str, int], None] | None" = None
        # called while blocking for an ack (feed a watchdog there)
        self.on_wait: "Callable[[], object] | None" = None
        self.sock: "Any" = None
        self.connected = False
        self._poller: "Any" = None
        self._will: tuple[str, bytes, int, bool] | None = None
        self._rx = bytearray()
        self._chunk = bytearray(_READ_CHUNK)
        self._skip = 0  # bytes of an oversized PUBLISH still to drop
        self._pid = 0
        self._inflight: dict[int, bytes] = {}  # pid -> PUBLISH not yet acknowledged
        self._subacks: dict[int, bytes] = {}  # pid -> return codes
        self._unsubacks: list[int] = []  # pids of UNSUBACKs received
        self._connack: tuple[bool, int] | None = None
        self._last_tx = 0
        self._ping_at: int | None = None  # ticks when a PINGREQ went out unanswered

    # ------------------------------------------------------------ session API

    def set_last_will(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        pk.check_topic(topic, False)
        pk.check_qos(qos)
        self._will = (topic, bytes(payload), qos, retain)

    def inflight(self) -> list[int]:
        """Packet ids of QoS 1 messages sent and not yet acknowledged."""
        return sorted(self._inflight)

    def connect(self, sock: "Any" = None) -> bool:
        """Open the connection (or use ``sock``), CONNECT and wait for CONNACK.

        Returns the broker's session-present flag. With a kept session (clean_session
        False) unacknowledged QoS 1 messages are sent again, with DUP and their ids.
        """
        self.close()
        self._reset_connection_state()
        if sock is None:
            sock = self._open()
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
        self.sock = sock
        try:
            packet = pk.connect_packet(
                self.client_id, self.keepalive, self.clean_session, self._will
            )
            self._send(packet)
            self._wait(lambda: self._connack is not None, "CONNACK")
        except MQTTError:
            self.close()
            raise
        session_present, code = self._connack or (False, 0)
        if code:
            self.close()
            raise ConnectRefused(code)
        self.connected = True
        if self.clean_session:
            self._inflight = {}
        for pid in sorted(self._inflight):
            self._send(pk.with_dup(self._inflight[pid]))
        return session_present

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        timeout_ms: int | None = None,
    ) -> int:
        """Send a message; at QoS 1 wait for PUBACK (AckTimeout keeps it for a resend)."""
        self._require_connection()
        pid = self._next_pid() if qos else 0
        packet = pk.publish_packet(topic, payload, qos, retain, pid)
        if qos:
            self._inflight[pid] = packet
        self._send(packet)
        if qos:
            self._wait(lambda: pid not in self._inflight, "PUBACK", timeout_ms)
        return pid

    def subscribe(self, topic: str, qos: int = 1, timeout_ms: int | None = None) -> int:
        """Subscribe to one filter; returns the granted QoS or raises SubscribeRefused."""
        self._require_connection()
        pid = self._next_pid()
        self._send(pk.subscribe_packet(pid, topic, qos))
        self._wait(lambda: pid in self._subacks, "SUBACK", timeout_ms)
        code = self._subacks.pop(pid)[0]
        if code == pk.SUBACK_FAILURE:
            raise SubscribeRefused("broker refused subscription to %r" % (topic,))
        return code

    def unsubscribe(self, topic: str, timeout_ms: int | None = None) -> None:
        """Drop one filter from the session; waits for UNSUBACK."""
        self._require_connection()
        pid = self._next_pid()
        self._send(pk.unsubscribe_packet(pid, topic))
        self._wait(lambda: pid in self._unsubacks, "UNSUBACK", timeout_ms)
        self._unsubacks.remove(pid)

    def poll(self, now: int | None = None) -> None:
        """Non-blocking step: read what is there (bounded), dispatch it, ping when due."""
        self._require_connection()
        for _ in range(_READS_PER_POLL):
            if not self._read_some():
                break
        self._keepalive(clock.ticks_ms() if now is None else now)

    check_msg = poll

    def wait_msg(self, timeout_ms: int) -> None:
        """Block up to ``timeout_ms`` until the socket is readable, then poll()."""
        self._wait_io(timeout_ms, False)
        self.poll()

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker then drops the last will) and close."""
        if self.sock is not None and self.connected:
            try:
                self._send(bytes([pk.DISCONNECT, 0]))
            except MQTTError:
                pass
        self.close()

    def close(self) -> None:
        """Close the socket without DISCONNECT (the broker will publish the will)."""
        sock = self.sock
        self.sock = None
        self.connected = False
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ------------------------------------------------------------ internals

    def _open(self) -> "Any":
        try:
            infos = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise NetworkError("cannot resolve %s: %s" % (self.server, exc))  # noqa: B904
        sock = None
        problem = "no address"
        for info in infos:
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout_ms / 1000)
                sock.connect(info[-1])
                break
            except OSError as exc:
                problem = str(exc)
                sock.close()
                sock = None
        if sock is None:
            raise NetworkError("cannot connect to %s:%d: %s" % (self.server, self.port, problem))
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
            except (OSError, ValueError) as exc:  # MicroPython reports verify errors as ValueError
                sock.close()
                detail = str(exc).strip() or repr(exc)
                raise TLSError("TLS handshake with %s failed: %s" % (self.server, detail))  # noqa: B904
        sock.setblocking(False)
        return sock

    def _reset_connection_state(self) -> None:
        self._rx = bytearray()
        self._skip = 0
        self._subacks = {}
        self._unsubacks = []
        self._connack = None
        self._ping_at = None

    def _require_connection(self) -> None:
        if self.sock is None:
            raise NetworkError("not connected")

    def _next_pid(self) -> int:
        for _ in range(65536):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._inflight and self._pid not in self._subacks:
                return self._pid
        raise LocalProtocolError("no free packet id")

    def _wait_io(self, timeout_ms: int, writable: bool) -> None:
        if self._poller is None or self.sock is None:
            clock.sleep_ms(min(timeout_ms, 5))
            return
        events = select.POLLOUT if writable else select.POLLIN
        self._poller.modify(self.sock, events)
        try:
            self._poller.poll(timeout_ms)
        finally:
            if writable and self._poller is not None:
                self._poller.modify(self.sock, select.POLLIN)

    def _send(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            raise NetworkError("not connected")
        view = memoryview(data)
        sent = 0
        start = clock.ticks_ms()
        while sent < len(data):
            try:
                n = sock.write(view[sent:])
            except OSError as exc:
                if not _would_block(exc):
                    self.close()
                    raise NetworkError("write failed: %s" % (exc,))  # noqa: B904
                n = None
            if n:
                sent += n
                continue
            left = self.timeout_ms - clock.ticks_diff(clock.ticks_ms(), start)
            if left <= 0:
                self.close()
                raise NetworkError("write timed out")
            self._wait_io(left, True)
        self._last_tx = clock.ticks_ms()

    def _read_some(self) -> bool:
        """Read one chunk if there is one and handle every whole packet. False: no data."""
        try:
            n = self.sock.readinto(self._chunk)  # into one buffer: no allocation per read
        except OSError as exc:
            if _would_block(exc):
                return False
            self.close()
            raise NetworkError("read failed: %s" % (exc,))  # noqa: B904
        if n is None:
            return False
        if not n:
            self.close()
            raise NetworkError("connection closed by the broker")
        self._rx.extend(memoryview(self._chunk)[:n])
        while self.sock is not None and self._rx:
            if self._skip:
                n = min(self._skip, len(self._rx))
                self._rx[:n] = b""
                self._skip -= n
                continue
            try:
                found = pk.split_packet(self._rx, self.max_packet)
            except PacketTooLarge:
                if not self._skip_publish():
                    break
                continue
            if found is None:
                break
            first, body, length = found
            self._rx[:length] = b""
            self._handle(pk.parse_packet(first, body))
        return True

    def _skip_publish(self) -> bool:
        """Acknowledge and drop an oversized PUBLISH without holding it; False: its
        header is not all here yet."""
        head = pk.publish_prefix(self._rx, self.max_packet)
        if head is None:
            return False
        topic, qos, pid, total = head
        n = min(total, len(self._rx))
        self._rx[:n] = b""
        self._skip = total - n
        if qos:
            self._send(pk.puback_packet(pid))
        if self.on_oversized is not None:
            self.on_oversized(topic, total)
        return True

    def _handle(self, packet: "tuple[Any, ...]") -> None:
        ptype = packet[0]
        if ptype == pk.CONNACK:
            if self.connected or self._connack is not None:
                raise RemoteProtocolError("second CONNACK")
            self._connack = (packet[1], packet[2])
            return
        if not self.connected and self._connack is None:
            raise RemoteProtocolError("packet type 0x%x before CONNACK" % ptype)
        if ptype == pk.PUBLISH:
            _t, topic, payload, qos, retain, _dup, pid = packet
            if self.on_message is not None:
                self.on_message(topic, payload, retain)
            if qos:
                self._send(pk.puback_packet(pid))
        elif ptype == pk.PUBACK:
            self._inflight.pop(packet[1], None)  # unknown ids: late duplicate acks
        elif ptype == pk.SUBACK:
            self._subacks[packet[1]] = packet[2]
        elif ptype == pk.UNSUBACK:
            if len(self._unsubacks) < 8:
                self._unsubacks.append(packet[1])
        elif ptype == pk.PINGRESP:
            self._ping_at = None

    def _keepalive(self, now: int) -> None:
        if not self.keepalive or not self.connected:
            return
        period = self.keepalive * 1000
        if self._ping_at is not None:
            if clock.ticks_diff(now, self._ping_at) >= period:
                self.close()
                raise AckTimeout("no PINGRESP within %d s" % self.keepalive)
        elif clock.ticks_diff(now, self._last_tx) >= period:
            self._send(bytes([pk.PINGREQ, 0]))
            self._last_tx = now
            self._ping_at = now

    def _wait(self, done: "Callable[[], bool]", what: str, timeout_ms: int | None = None) -> None:
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        start = clock.ticks_ms()
        while not done():
            if self.on_wait is not None:
                self.on_wait()
            if self.sock is None:
                raise NetworkError("connection closed while waiting for " + what)
            if self._read_some():
                continue
            left = timeout - clock.ticks_diff(clock.ticks_ms(), start)
            if left <= 0:
                raise AckTimeout("no %s within %d ms" % (what, timeout))
            self._wait_io(left, False)
