# MQTT 3.1.1 packets for the camfleet node: plain functions on bytes, no I/O.
#
# Builders for what the node sends (CONNECT, PUBLISH, SUBSCRIBE, PUBACK), a splitter that
# finds whole packets in a byte buffer (refusing an oversized one from its header alone),
# and a parser for what a broker may send, which refuses anything malformed. Errors form
# one tree under MQTTError; the name says which side broke the protocol:
# LocalProtocolError (we were asked to send something MQTT forbids) or RemoteProtocolError
# (the broker sent something malformed or unexpected). mqtt.py holds the client.

try:
    from micropython import const
except ImportError:  # CPython

    def const(__expr: int) -> int:
        return __expr


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# Packet types (first byte, high nibble) as the parser reports them.
CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x80)
SUBACK = const(0x90)
UNSUBSCRIBE = const(0xA0)
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

    def __init__(self, code: int) -> None:
        reason = CONNACK_REASONS[code] if 0 < code < len(CONNACK_REASONS) else "unknown"
        super().__init__("connection refused: %d (%s)" % (code, reason))
        self.code = code


class SubscribeRefused(MQTTError):
    """SUBACK carried the failure code 0x80 for a topic filter."""


class AckTimeout(MQTTError):
    """CONNACK, PUBACK, SUBACK or PINGRESP did not arrive in time."""


# ---------------------------------------------------------------- encoding


def encode_remaining_length(n: int) -> bytes:
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


def decode_remaining_length(
    buf: bytes | bytearray | memoryview, start: int = 1
) -> tuple[int, int] | None:
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


def _str(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else bytes(s)
    if len(data) > 65535:
        raise LocalProtocolError("string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def check_topic(topic: str, is_filter: bool) -> None:
    if not isinstance(topic, str) or not topic:
        raise LocalProtocolError("topic must be a non-empty string")
    if "\x00" in topic:
        raise LocalProtocolError("topic contains NUL")
    if not is_filter and ("+" in topic or "#" in topic):
        raise LocalProtocolError("wildcard in a topic name: %r" % (topic,))


def check_qos(qos: int) -> None:
    if qos not in (0, 1):
        raise LocalProtocolError("QoS %r not supported (0 or 1)" % (qos,))


def connect_packet(
    client_id: str,
    keepalive: int,
    clean_session: bool,
    will: "tuple[str, bytes, int, bool] | None" = None,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    """CONNECT. ``will`` is (topic, payload bytes, qos, retain) or None."""
    if keepalive < 0 or keepalive > 65535:
        raise LocalProtocolError("keepalive %r out of range" % (keepalive,))
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        w_topic, w_payload, w_qos, w_retain = will
        check_topic(w_topic, False)
        check_qos(w_qos)
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


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, retain: bool = False, pid: int = 0, dup: bool = False
) -> bytes:
    check_topic(topic, False)
    check_qos(qos)
    if qos == 0 and (pid or dup):
        raise LocalProtocolError("a QoS 0 PUBLISH has no packet id and no DUP")
    if qos and not 0 < pid <= 65535:
        raise LocalProtocolError("packet id %r out of range" % (pid,))
    first = PUBLISH | (qos << 1) | (_RETAIN if retain else 0) | (_DUP if dup else 0)
    body = _str(topic)
    if qos:
        body += pid.to_bytes(2, "big")
    return _packet(first, body + bytes(payload))


def subscribe_packet(pid: int, topic: str, qos: int) -> bytes:
    check_topic(topic, True)
    check_qos(qos)
    return _packet(SUBSCRIBE | 0x02, pid.to_bytes(2, "big") + _str(topic) + bytes([qos]))


def unsubscribe_packet(pid: int, topic: str) -> bytes:
    check_topic(topic, True)
    return _packet(UNSUBSCRIBE | 0x02, pid.to_bytes(2, "big") + _str(topic))


def puback_packet(pid: int) -> bytes:
    return bytes([PUBACK, 2]) + pid.to_bytes(2, "big")


def with_dup(packet: bytes) -> bytes:
    """The same PUBLISH with the DUP flag set (a retransmission)."""
    return bytes([packet[0] | _DUP]) + packet[1:]


# ---------------------------------------------------------------- parsing


def split_packet(buf: bytes | bytearray, max_packet: int) -> tuple[int, bytes, int] | None:
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


def publish_prefix(buf: bytes | bytearray, max_packet: int) -> "tuple[str, int, int, int] | None":
    """(topic, qos, pid, whole length) of the oversized PUBLISH at the start of ``buf``,
    read from its first bytes alone (None while they are missing), so that the client can
    acknowledge and skip it without holding it. Any other oversized packet is refused."""
    rl = decode_remaining_length(buf, 1)
    if rl is None:
        return None
    length, at = rl
    if buf[0] & 0xF0 != PUBLISH:
        raise PacketTooLarge("packet type 0x%x of %d bytes" % (buf[0] & 0xF0, at + length))
    qos = (buf[0] >> 1) & 3
    if qos > 1:
        raise RemoteProtocolError("PUBLISH with QoS %d" % qos)
    if len(buf) < at + 2:
        return None
    end = at + 2 + ((buf[at] << 8) | buf[at + 1])
    if end + 2 > max_packet or end + (2 if qos else 0) > at + length:
        raise RemoteProtocolError("PUBLISH topic longer than the packet allows")
    if len(buf) < end + (2 if qos else 0):
        return None
    try:
        topic = bytes(buf[at + 2 : end]).decode()
    except UnicodeError:
        raise RemoteProtocolError("PUBLISH topic is not UTF-8")  # noqa: B904 - no chaining on MicroPython
    return topic, qos, _pid(buf, end) if qos else 0, at + length


def _pid(body: bytes | bytearray, at: int) -> int:
    pid = (body[at] << 8) | body[at + 1]
    if pid == 0:
        raise RemoteProtocolError("packet id 0")
    return pid


def parse_packet(first: int, body: bytes) -> "tuple[Any, ...]":
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
