# A small MQTT 3.1.1 client for the camfleet node (MicroPython first, CPython for tests).
#
# No MQTT client installs on MicroPython, so the node carries this one. It does what a
# fleet member needs and no more: CONNECT with a last will and a kept session, PUBLISH at
# QoS 0 and 1 (QoS 1 waits for PUBACK; unacknowledged messages are re-sent with DUP after
# a reconnect that keeps the session), SUBSCRIBE with a SUBACK check, PINGREQ when the
# keepalive is due, and a non-blocking ``poll()`` that reads what is there, bounded.
#
# Packets are built and parsed by plain functions on bytes (tested byte for byte); the
# client holds the socket in ``self.sock`` so a test can put a fake byte stream there.
# Errors form one tree under MQTTError; which side broke the protocol is in the name:
# LocalProtocolError (we were asked to send something MQTT forbids) or RemoteProtocolError
# (the broker sent something malformed or unexpected).

import socket
import time

try:
    from micropython import const
except ImportError:  # CPython

    def const(expr):  # type: ignore[no-redef]
        return expr


try:
    import select
except ImportError:  # a port without select: waits fall back to sleeping
    select = None

if hasattr(time, "ticks_ms"):
    _ticks_ms = time.ticks_ms
    _ticks_diff = time.ticks_diff
    _sleep_ms = time.sleep_ms
else:  # CPython, for the byte-level tests
    _mono = getattr(time, "monotonic", time.time)

    def _ticks_ms():
        return int(_mono() * 1000)

    def _ticks_diff(a, b):
        return a - b

    def _sleep_ms(ms):
        time.sleep(ms / 1000)


# Packet types (first byte, high nibble) as the parser reports them.
CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x80)
SUBACK = const(0x90)
UNSUBACK = const(0xB0)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

MAX_REMAINING = const(268435455)  # largest remaining length MQTT can encode (4 bytes)
SUBACK_FAILURE = const(0x80)
CONNACK_REASONS = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)

_DUP = const(0x08)
_RETAIN = const(0x01)
_READ_CHUNK = const(512)  # bytes per socket read
_READS_PER_POLL = const(8)  # bound on the work one poll() does
_EAGAIN = const(11)


class MQTTError(Exception):
    """Anything this client raises."""


class LocalProtocolError(MQTTError):
    """We were asked to send something MQTT forbids (bad topic, QoS, size...)."""


class RemoteProtocolError(MQTTError):
    """The broker sent a malformed or unexpected packet; the connection is unusable."""


class PacketTooLarge(RemoteProtocolError):
    """An incoming packet is larger than this client accepts (refused before reading it)."""


class NetworkError(MQTTError):
    """Cannot reach the broker, or the connection broke (I/O error, closed by the peer)."""


class TLSError(NetworkError):
    """The TLS handshake failed (for instance the broker's certificate is not trusted)."""


class ConnectRefused(MQTTError):
    """CONNACK with a non-zero return code; ``code`` holds it."""

    def __init__(self, code):
        reason = CONNACK_REASONS[code] if 0 < code < len(CONNACK_REASONS) else "unknown"
        MQTTError.__init__(self, "connection refused: %d (%s)" % (code, reason))
        self.code = code


class SubscribeRefused(MQTTError):
    """SUBACK carried the failure code 0x80 for a topic filter."""


class AckTimeout(MQTTError):
    """CONNACK, PUBACK, SUBACK or PINGRESP did not arrive in time."""


# ---------------------------------------------------------------- encoding


def encode_remaining_length(n):
    if n < 0 or n > MAX_REMAINING:
        raise LocalProtocolError("remaining length %d out of range" % n)
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buf, start=1):
    """(value, index after it) from ``buf[start:]``, or None while bytes are missing."""
    value = 0
    shift = 0
    i = start
    while i < len(buf):
        digit = buf[i]
        value |= (digit & 0x7F) << shift
        i += 1
        if not digit & 0x80:
            return value, i
        if i - start >= 4:
            raise RemoteProtocolError("remaining length longer than 4 bytes")
        shift += 7
    return None


def _str(s):
    data = s.encode() if isinstance(s, str) else bytes(s)
    if len(data) > 65535:
        raise LocalProtocolError("string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _packet(first, body):
    return bytes([first]) + encode_remaining_length(len(body)) + body


def _check_topic(topic, is_filter):
    if not isinstance(topic, str) or not topic:
        raise LocalProtocolError("topic must be a non-empty string")
    if "\x00" in topic:
        raise LocalProtocolError("topic contains NUL")
    if not is_filter and ("+" in topic or "#" in topic):
        raise LocalProtocolError("wildcard in a topic name: %r" % (topic,))


def _check_qos(qos):
    if qos not in (0, 1):
        raise LocalProtocolError("QoS %r not supported (0 or 1)" % (qos,))


def connect_packet(client_id, keepalive, clean_session, will=None, username=None, password=None):
    """CONNECT. ``will`` is (topic, payload bytes, qos, retain) or None."""
    if keepalive < 0 or keepalive > 65535:
        raise LocalProtocolError("keepalive %r out of range" % (keepalive,))
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        w_topic, w_payload, w_qos, w_retain = will
        _check_topic(w_topic, False)
        _check_qos(w_qos)
        flags |= 0x04 | (w_qos << 3) | (0x20 if w_retain else 0)
        payload += _str(w_topic) + _str(w_payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    header = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big")
    return _packet(CONNECT, header + payload)


def publish_packet(topic, payload, qos=0, retain=False, pid=0, dup=False):
    _check_topic(topic, False)
    _check_qos(qos)
    if qos == 0 and (pid or dup):
        raise LocalProtocolError("a QoS 0 PUBLISH has no packet id and no DUP")
    if qos and not 0 < pid <= 65535:
        raise LocalProtocolError("packet id %r out of range" % (pid,))
    first = PUBLISH | (qos << 1) | (_RETAIN if retain else 0) | (_DUP if dup else 0)
    body = _str(topic)
    if qos:
        body += pid.to_bytes(2, "big")
    return _packet(first, body + bytes(payload))


def subscribe_packet(pid, topic, qos):
    _check_topic(topic, True)
    _check_qos(qos)
    return _packet(SUBSCRIBE | 0x02, pid.to_bytes(2, "big") + _str(topic) + bytes([qos]))


def puback_packet(pid):
    return bytes([PUBACK, 2]) + pid.to_bytes(2, "big")


def with_dup(packet):
    """The same PUBLISH with the DUP flag set (a retransmission)."""
    return bytes([packet[0] | _DUP]) + packet[1:]


# ---------------------------------------------------------------- parsing


def split_packet(buf, max_packet):
    """(first byte, body, length) of the first whole packet in ``buf``, or None.

    Refuses a packet larger than ``max_packet`` as soon as its header says so.
    """
    if len(buf) < 2:
        return None
    rl = decode_remaining_length(buf, 1)
    if rl is None:
        return None
    length, start = rl
    if start + length > max_packet:
        raise PacketTooLarge("packet of %d bytes, limit %d" % (start + length, max_packet))
    if len(buf) < start + length:
        return None
    return buf[0], bytes(buf[start : start + length]), start + length


def _pid(body, at):
    pid = (body[at] << 8) | body[at + 1]
    if pid == 0:
        raise RemoteProtocolError("packet id 0")
    return pid


def parse_packet(first, body):
    """Decode one packet the broker may send. Returns a tuple whose [0] is its type:

    (CONNACK, session_present, code) | (PUBLISH, topic, payload, qos, retain, dup, pid)
    | (PUBACK, pid) | (SUBACK, pid, codes) | (UNSUBACK, pid) | (PINGRESP,)
    """
    ptype = first & 0xF0
    flags = first & 0x0F
    n = len(body)
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise RemoteProtocolError("PUBLISH with QoS 3")
        if qos == 2:
            raise RemoteProtocolError("PUBLISH with QoS 2, never subscribed at QoS 2")
        dup = bool(flags & _DUP)
        if qos == 0 and dup:
            raise RemoteProtocolError("QoS 0 PUBLISH with DUP")
        if n < 2:
            raise RemoteProtocolError("PUBLISH too short")
        tlen = (body[0] << 8) | body[1]
        at = 2 + tlen
        if at + (2 if qos else 0) > n:
            raise RemoteProtocolError("PUBLISH topic runs past the packet")
        try:
            topic = body[2:at].decode()
        except UnicodeError:
            raise RemoteProtocolError("PUBLISH topic is not UTF-8")  # noqa: B904 - no chaining on MicroPython
        if not topic or "+" in topic or "#" in topic:
            raise RemoteProtocolError("bad PUBLISH topic %r" % (topic,))
        pid = 0
        if qos:
            pid = _pid(body, at)
            at += 2
        return (PUBLISH, topic, body[at:], qos, bool(flags & _RETAIN), dup, pid)
    if flags:
        raise RemoteProtocolError("reserved flags 0x%x on packet type 0x%x" % (flags, ptype))
    if ptype == CONNACK:
        if n != 2 or body[0] & 0xFE:
            raise RemoteProtocolError("malformed CONNACK")
        if body[1] >= len(CONNACK_REASONS):
            raise RemoteProtocolError("CONNACK return code %d is reserved" % body[1])
        return (CONNACK, bool(body[0] & 1), body[1])
    if ptype in (PUBACK, UNSUBACK):
        if n != 2:
            raise RemoteProtocolError("malformed ack for type 0x%x" % ptype)
        return (ptype, _pid(body, 0))
    if ptype == SUBACK:
        if n < 3:
            raise RemoteProtocolError("SUBACK too short")
        codes = bytes(body[2:])
        for code in codes:
            if code not in (0, 1, 2, SUBACK_FAILURE):
                raise RemoteProtocolError("SUBACK return code 0x%x" % code)
        return (SUBACK, _pid(body, 0), codes)
    if ptype == PINGRESP:
        if n:
            raise RemoteProtocolError("PINGRESP with a body")
        return (PINGRESP,)
    raise RemoteProtocolError("unexpected packet type 0x%x from the broker" % ptype)


# ---------------------------------------------------------------- client


def _would_block(exc):
    return bool(exc.args) and exc.args[0] == _EAGAIN


class MQTTClient:
    """One MQTT 3.1.1 connection. ``on_message(topic, payload, retain)`` gets PUBLISHes."""

    def __init__(
        self,
        client_id,
        server,
        port=8883,
        ssl_context=None,
        server_hostname=None,
        keepalive=60,
        clean_session=True,
        max_packet=20480,
        timeout_ms=10000,
    ):
        self.client_id = client_id
        self.server = server
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or server
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.max_packet = max_packet
        self.timeout_ms = timeout_ms
        self.on_message = None
        self.sock = None
        self.connected = False
        self._poller = None
        self._will = None
        self._rx = bytearray()
        self._pid = 0
        self._inflight = {}  # pid -> PUBLISH bytes not yet acknowledged (QoS 1)
        self._subacks = {}  # pid -> return codes
        self._connack = None
        self._last_tx = 0
        self._ping_at = None  # ticks when a PINGREQ went out unanswered

    # ------------------------------------------------------------ session API

    def set_last_will(self, topic, payload, qos=0, retain=False):
        _check_topic(topic, False)
        _check_qos(qos)
        self._will = (topic, bytes(payload), qos, retain)

    def inflight(self):
        """Packet ids of QoS 1 messages sent and not yet acknowledged."""
        return sorted(self._inflight)

    def connect(self, sock=None):
        """Open the connection (or use ``sock``), CONNECT and wait for CONNACK.

        Returns the broker's session-present flag. With a kept session (clean_session
        False) unacknowledged QoS 1 messages are sent again, with DUP and their ids.
        """
        self.close()
        self._rx = bytearray()
        self._subacks = {}
        self._connack = None
        self._ping_at = None
        if sock is None:
            sock = self._open()
            if select is not None:
                self._poller = select.poll()
                self._poller.register(sock, select.POLLIN)
        self.sock = sock
        self._send(connect_packet(self.client_id, self.keepalive, self.clean_session, self._will))
        self._wait(lambda: self._connack is not None, "CONNACK")
        session_present, code = self._connack  # type: ignore[misc]
        if code:
            self.close()
            raise ConnectRefused(code)
        self.connected = True
        if self.clean_session:
            self._inflight = {}
        for pid in sorted(self._inflight):
            self._send(with_dup(self._inflight[pid]))
        return session_present

    def publish(self, topic, payload, qos=0, retain=False, timeout_ms=None):
        """Send a message; at QoS 1 wait for PUBACK (AckTimeout keeps it for a resend)."""
        self._require_connection()
        pid = self._next_pid() if qos else 0
        packet = publish_packet(topic, payload, qos, retain, pid)
        if qos:
            self._inflight[pid] = packet
        self._send(packet)
        if qos:
            self._wait(lambda: pid not in self._inflight, "PUBACK", timeout_ms)
        return pid

    def subscribe(self, topic, qos=1, timeout_ms=None):
        """Subscribe to one filter; returns the granted QoS or raises SubscribeRefused."""
        self._require_connection()
        pid = self._next_pid()
        self._send(subscribe_packet(pid, topic, qos))
        self._wait(lambda: pid in self._subacks, "SUBACK", timeout_ms)
        code = self._subacks.pop(pid)[0]
        if code == SUBACK_FAILURE:
            raise SubscribeRefused("broker refused subscription to %r" % (topic,))
        return code

    def poll(self, now=None):
        """Non-blocking step: read what is there (bounded), dispatch it, ping when due."""
        self._require_connection()
        for _ in range(_READS_PER_POLL):
            if not self._read_some():
                break
        self._keepalive(_ticks_ms() if now is None else now)

    check_msg = poll

    def wait_msg(self, timeout_ms):
        """Block up to ``timeout_ms`` until the socket is readable, then poll()."""
        self._wait_io(timeout_ms, False)
        self.poll()

    def disconnect(self):
        """Send DISCONNECT (the broker then drops the last will) and close."""
        if self.sock is not None and self.connected:
            try:
                self._send(bytes([DISCONNECT, 0]))
            except MQTTError:
                pass
        self.close()

    def close(self):
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

    def _open(self):
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

    def _require_connection(self):
        if self.sock is None:
            raise NetworkError("not connected")

    def _next_pid(self):
        for _ in range(65536):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._inflight and self._pid not in self._subacks:
                return self._pid
        raise LocalProtocolError("no free packet id")

    def _wait_io(self, timeout_ms, writable):
        if self._poller is None or self.sock is None:
            _sleep_ms(min(timeout_ms, 5))
            return
        events = select.POLLOUT if writable else select.POLLIN  # type: ignore[union-attr]
        self._poller.modify(self.sock, events)
        try:
            self._poller.poll(timeout_ms)
        finally:
            if writable and self._poller is not None:
                self._poller.modify(self.sock, select.POLLIN)  # type: ignore[union-attr]

    def _send(self, data):
        sock = self.sock
        if sock is None:
            raise NetworkError("not connected")
        view = memoryview(data)
        sent = 0
        start = _ticks_ms()
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
            left = self.timeout_ms - _ticks_diff(_ticks_ms(), start)
            if left <= 0:
                self.close()
                raise NetworkError("write timed out")
            self._wait_io(left, True)
        self._last_tx = _ticks_ms()

    def _read_some(self):
        """Read one chunk if there is one and handle every whole packet. False: no data."""
        try:
            data = self.sock.read(_READ_CHUNK)  # type: ignore[union-attr]
        except OSError as exc:
            if _would_block(exc):
                return False
            self.close()
            raise NetworkError("read failed: %s" % (exc,))  # noqa: B904
        if data is None:
            return False
        if not data:
            self.close()
            raise NetworkError("connection closed by the broker")
        self._rx.extend(data)
        while self.sock is not None:
            found = split_packet(self._rx, self.max_packet)
            if found is None:
                break
            first, body, length = found
            self._rx[:length] = b""
            self._handle(parse_packet(first, body))
        return True

    def _handle(self, packet):
        ptype = packet[0]
        if ptype == CONNACK:
            if self.connected or self._connack is not None:
                raise RemoteProtocolError("second CONNACK")
            self._connack = (packet[1], packet[2])
            return
        if not self.connected and self._connack is None:
            raise RemoteProtocolError("packet type 0x%x before CONNACK" % ptype)
        if ptype == PUBLISH:
            _t, topic, payload, qos, retain, _dup, pid = packet
            if self.on_message is not None:
                self.on_message(topic, payload, retain)
            if qos:
                self._send(puback_packet(pid))
        elif ptype == PUBACK:
            self._inflight.pop(packet[1], None)  # unknown ids: late duplicate acks
        elif ptype == SUBACK:
            self._subacks[packet[1]] = packet[2]
        elif ptype == PINGRESP:
            self._ping_at = None

    def _keepalive(self, now):
        if not self.keepalive or not self.connected:
            return
        period = self.keepalive * 1000
        if self._ping_at is not None:
            if _ticks_diff(now, self._ping_at) >= period:
                self.close()
                raise AckTimeout("no PINGRESP within %d s" % self.keepalive)
        elif _ticks_diff(now, self._last_tx) >= period:
            self._send(bytes([PINGREQ, 0]))
            self._ping_at = now

    def _wait(self, done, what, timeout_ms=None):
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        start = _ticks_ms()
        while not done():
            if self.sock is None:
                raise NetworkError("connection closed while waiting for " + what)
            if self._read_some():
                continue
            left = timeout - _ticks_diff(_ticks_ms(), start)
            if left <= 0:
                raise AckTimeout("no %s within %d ms" % (what, timeout))
            self._wait_io(left, False)
