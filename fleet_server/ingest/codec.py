"""MQTT v5 packets for the server's ingest connection: encoders and a stream parser.

No sockets here (the client is ``mqtt5_client``): encoders return bytes, ``Parser.feed``
takes whatever ``recv`` returned (half a packet, or a hundred) and returns the complete
packets in order. Only what a subscriber with QoS 0/1 and a publisher of QoS 0/1 needs:
CONNECT/CONNACK, PUBLISH/PUBACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP,
DISCONNECT. The properties of a received PUBLISH are kept as raw bytes (ingest never reads
them; ``decode_properties`` does on demand).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from firmware import mqtt_packet

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP = 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

# property ids used here
P_PAYLOAD_FORMAT = 0x01
P_MESSAGE_EXPIRY = 0x02
P_RESPONSE_TOPIC = 0x08
P_CORRELATION = 0x09
P_SESSION_EXPIRY = 0x11
P_ASSIGNED_ID = 0x12
P_SERVER_KEEPALIVE = 0x13
P_REASON_STRING = 0x1F
P_RECEIVE_MAXIMUM = 0x21
P_TOPIC_ALIAS = 0x23
P_USER_PROPERTY = 0x26
P_MAX_PACKET = 0x27

_BYTE, _U16, _U32, _VAR, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VAR, 0x11: _U32,
    0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip

MAX_PACKET = mqtt_packet.MAX_REMAINING  # the largest remaining length MQTT can express


# The error tree, the fixed header, strings and variable byte integers are the same in MQTT
# 3.1.1 and 5, so they come from the node's packet code (firmware/mqtt_packet.py).
MqttError = mqtt_packet.MQTTError  # anything that ends an MQTT connection
RemoteProtocolError = mqtt_packet.RemoteProtocolError  # the broker sent bytes not MQTT v5


class RefusedError(MqttError):
    """The broker answered with a failure reason code (CONNACK, SUBACK, ...)."""

    def __init__(self, what: str, reason: int) -> None:
        super().__init__(f"{what} refused by the broker: reason 0x{reason:02x}")
        self.reason = reason


# ---------------------------------------------------------------- packets received
class Publish(NamedTuple):  # a tuple: made once per message, so made cheaply
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 for QoS 0
    retain: bool
    dup: bool
    properties: bytes = b""  # raw; see decode_properties


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    properties: dict[int, Any]


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, SUBACK or UNSUBACK: ``reasons`` holds one code (PUBACK) or one per filter."""

    kind: int
    packet_id: int
    reasons: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int
    properties: dict[int, Any]


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


Packet = Publish | ConnAck | Ack | Disconnect | PingResp


# ---------------------------------------------------------------- primitives
varint = mqtt_packet.encode_remaining_length
_read_varint = mqtt_packet.decode_remaining_length  # (value, next position) or None
_str = mqtt_packet._str  # str or bytes, with its 2-byte length
_packet = mqtt_packet._packet


def encode_properties(props: Sequence[tuple[int, Any]]) -> bytes:
    out = bytearray()
    for pid, value in props:
        kind = _PROPERTY_TYPES[pid]
        out += varint(pid)
        if kind == _BYTE:
            out.append(value)
        elif kind == _U16:
            out += struct.pack("!H", value)
        elif kind == _U32:
            out += struct.pack("!I", value)
        elif kind == _VAR:
            out += varint(value)
        elif kind in (_STR, _BIN):
            out += _str(value)
        else:
            out += _str(value[0]) + _str(value[1])
    return varint(len(out)) + bytes(out)


def decode_properties(data: bytes | memoryview) -> dict[int, Any]:
    """Properties (without their length prefix) -> {id: value}; user properties as a list."""
    out: dict[int, Any] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            got = _read_varint(data, pos)
            if got is None:
                raise RemoteProtocolError("property id cut short")
            pid, pos = got
            kind = _PROPERTY_TYPES.get(pid)
            if kind is None:
                raise RemoteProtocolError(f"unknown property 0x{pid:02x}")
            value: Any
            if kind == _BYTE:
                value, pos = data[pos], pos + 1
            elif kind == _U16:
                value, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
            elif kind == _U32:
                value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
            elif kind == _VAR:
                got = _read_varint(data, pos)
                if got is None:
                    raise RemoteProtocolError("property value cut short")
                value, pos = got
            elif kind in (_STR, _BIN):
                value, pos = _take_bytes(data, pos, end)
                if kind == _STR:
                    value = value.decode("utf-8")
            else:
                key, pos = _take_bytes(data, pos, end)
                val, pos = _take_bytes(data, pos, end)
                out.setdefault(pid, []).append((key.decode("utf-8"), val.decode("utf-8")))
                continue
            if pos > end:
                raise RemoteProtocolError("property value cut short")
            out[pid] = value
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"bad properties: {exc}") from exc
    return out


def _take_bytes(data: bytes | memoryview, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise RemoteProtocolError("length cut short")
    n = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + n > end:
        raise RemoteProtocolError("string or binary data cut short")
    return bytes(data[pos + 2 : pos + 2 + n]), pos + 2 + n


# ---------------------------------------------------------------- encoders
def connect(
    client_id: str,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int = 65535,
    max_packet: int | None = None,
) -> bytes:
    props: list[tuple[int, Any]] = [(P_SESSION_EXPIRY, session_expiry_s)]
    if receive_maximum != 65535:
        props.append((P_RECEIVE_MAXIMUM, receive_maximum))
    if max_packet is not None:
        props.append((P_MAX_PACKET, max_packet))
    flags = 0x02 if clean_start else 0x00
    body = (
        _str("MQTT")
        + bytes([5, flags])
        + struct.pack("!H", keepalive_s)
        + encode_properties(props)
        + _str(client_id)
    )
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    body = bytearray(struct.pack("!H", packet_id) + b"\x00")
    for topic_filter, qos in filters:
        body += _str(topic_filter) + bytes([qos & 0x03])
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def unsubscribe(packet_id: int, filters: Iterable[str]) -> bytes:
    body = bytearray(struct.pack("!H", packet_id) + b"\x00")
    for topic_filter in filters:
        body += _str(topic_filter)
    return _packet((UNSUBSCRIBE << 4) | 0x02, bytes(body))


_PUBACK_PREFIX = bytes([PUBACK << 4, 2])


puback = mqtt_packet.puback_packet  # reason 0 (success) in its short form, as in 3.1.1


def pubacks(packet_ids: Iterable[int]) -> bytes:
    """Many PUBACKs in one buffer (one send for a whole batch)."""
    return b"".join(_PUBACK_PREFIX + struct.pack("!H", pid) for pid in packet_ids)


def publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    dup: bool = False,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    message_expiry_s: int | None = None,
) -> bytes:
    if qos not in (0, 1):
        raise ValueError("this client publishes with QoS 0 or 1")
    props: list[tuple[int, Any]] = []
    if message_expiry_s is not None:
        props.append((P_MESSAGE_EXPIRY, message_expiry_s))
    if response_topic is not None:
        props.append((P_RESPONSE_TOPIC, response_topic))
    if correlation is not None:
        props.append((P_CORRELATION, correlation))
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = _str(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return _packet(first, head + encode_properties(props) + payload)


def pingreq() -> bytes:
    return bytes([PINGREQ << 4, 0])


def disconnect(reason: int = 0, session_expiry_s: int | None = None) -> bytes:
    props: list[tuple[int, Any]] = []
    if session_expiry_s is not None:
        props.append((P_SESSION_EXPIRY, session_expiry_s))
    return _packet(DISCONNECT << 4, bytes([reason]) + encode_properties(props))


# ---------------------------------------------------------------- parser
class Parser:
    """Bytes in, packets out. Keeps a partial packet until the rest arrives."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 2:
                got = _read_varint(buf, pos + 1)
                if got is None:
                    break
                length, start = got
                if length > self.max_packet:
                    raise RemoteProtocolError(f"packet of {length} bytes over the limit")
                if start + length > end:
                    break
                out.append(_decode(buf[pos], view[start : start + length]))
                pos = start + length
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return out


def _decode(first: int, body: memoryview) -> Packet:
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        return _decode_publish(flags, body)
    if kind == PUBACK:
        if len(body) < 2:
            raise RemoteProtocolError("PUBACK too short")
        reason = body[2] if len(body) > 2 else 0
        return Ack(PUBACK, (body[0] << 8) | body[1], (reason,))
    if kind in (SUBACK, UNSUBACK):
        if len(body) < 3:
            raise RemoteProtocolError("SUBACK/UNSUBACK too short")
        got = _read_varint(body, 2)
        if got is None:
            raise RemoteProtocolError("SUBACK/UNSUBACK properties cut short")
        plen, pos = got
        return Ack(kind, (body[0] << 8) | body[1], tuple(body[pos + plen :]))
    if kind == CONNACK:
        if len(body) < 2:
            raise RemoteProtocolError("CONNACK too short")
        props = _props_at(body, 2) if len(body) > 2 else {}
        return ConnAck(bool(body[0] & 0x01), body[1], props)
    if kind == PINGRESP:
        return PingResp()
    if kind == DISCONNECT:
        reason = body[0] if len(body) else 0
        return Disconnect(reason, _props_at(body, 1) if len(body) > 1 else {})
    raise RemoteProtocolError(f"unexpected packet type {kind}")


def _props_at(body: memoryview, pos: int) -> dict[int, Any]:
    got = _read_varint(body, pos)
    if got is None:
        raise RemoteProtocolError("properties cut short")
    plen, start = got
    if start + plen > len(body):
        raise RemoteProtocolError("properties cut short")
    return decode_properties(body[start : start + plen])


def _decode_publish(flags: int, body: memoryview) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise RemoteProtocolError("PUBLISH with QoS 3")
    end = len(body)
    if end < 2:
        raise RemoteProtocolError("PUBLISH too short")
    tlen = (body[0] << 8) | body[1]
    pos = 2 + tlen
    if pos > end:
        raise RemoteProtocolError("PUBLISH topic cut short")
    try:
        topic = str(body[2:pos], "utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("PUBLISH topic is not UTF-8") from exc
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise RemoteProtocolError("PUBLISH packet id cut short")
        packet_id = (body[pos] << 8) | body[pos + 1]
        pos += 2
    got = _read_varint(body, pos)
    if got is None:
        raise RemoteProtocolError("PUBLISH properties cut short")
    plen, pos = got
    if pos + plen > end:
        raise RemoteProtocolError("PUBLISH properties cut short")
    props = bytes(body[pos : pos + plen]) if plen else b""
    return Publish(topic, bytes(body[pos + plen :]), qos, packet_id, bool(flags & 0x01),
                   bool(flags & 0x08), props)  # fmt: skip
