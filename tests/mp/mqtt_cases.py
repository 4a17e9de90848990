# Byte-exact cases for firmware/mqtt.py, run under CPython and under MicroPython. The
# broker side is a FakeSocket: bytes queued for the client to read, bytes it wrote.

from firmware import mqtt, mqtt_packet
from tests.mp.checks import raises
from tests.mp.fakes import FakeSocket

M = mqtt
P = mqtt_packet
CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_SESSION = b"\x20\x02\x01\x00"


def _client(keepalive=30, clean=False, timeout_ms=50, max_packet=2048):
    return M.MQTTClient(
        "node-0001",
        "broker.invalid",
        keepalive=keepalive,
        clean_session=clean,
        max_packet=max_packet,
        timeout_ms=timeout_ms,
    )


def _connected(clean=False, **kwargs):
    client = _client(clean=clean, **kwargs)
    sock = FakeSocket(CONNACK_OK)
    client.connect(sock)
    sock.sent = bytearray()
    return client, sock


# ---------------------------------------------------------------- remaining length


def test_remaining_length_encoding():
    table = (
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    )
    for value, encoded in table:
        assert P.encode_remaining_length(value) == encoded, value
        assert P.decode_remaining_length(b"\x30" + encoded) == (value, 1 + len(encoded))
    raises(M.LocalProtocolError, P.encode_remaining_length, 268435456)
    raises(M.LocalProtocolError, P.encode_remaining_length, -1)


def test_remaining_length_incomplete_and_too_long():
    assert P.decode_remaining_length(b"\x30") is None
    assert P.decode_remaining_length(b"\x30\x80") is None
    assert P.decode_remaining_length(b"\x30\xff\xff\xff") is None
    raises(M.RemoteProtocolError, P.decode_remaining_length, b"\x30\xff\xff\xff\xff")
    raises(M.RemoteProtocolError, P.decode_remaining_length, b"\x30\x80\x80\x80\x80\x01")


# ---------------------------------------------------------------- packets out


def test_connect_packet_minimal_clean():
    got = P.connect_packet("abc", 60, True)
    assert got == b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc"


def test_connect_packet_with_will_kept_session():
    got = P.connect_packet("n-1", 10, False, ("t/s", b"off", 1, True))
    # flags: will 0x04, will QoS 1 0x08, will retain 0x20; no clean session
    body = b"\x00\x04MQTT\x04\x2c\x00\x0a" + b"\x00\x03n-1" + b"\x00\x03t/s" + b"\x00\x03off"
    assert got == b"\x10" + bytes([len(body)]) + body


def test_connect_packet_user_password_and_checks():
    got = P.connect_packet("c", 0, True, None, "u", b"p")
    assert got == b"\x10\x13\x00\x04MQTT\x04\xc2\x00\x00\x00\x01c\x00\x01u\x00\x01p"
    raises(M.LocalProtocolError, P.connect_packet, "c", 65536, True)
    raises(M.LocalProtocolError, P.connect_packet, "c", 10, True, ("a/#", b"", 0, False))
    raises(M.LocalProtocolError, P.connect_packet, "c", 10, True, ("a", b"", 2, False))


def test_publish_packets():
    assert P.publish_packet("a/b", b"hi") == b"\x30\x07\x00\x03a/bhi"
    assert P.publish_packet("a/b", b"hi", 0, True) == b"\x31\x07\x00\x03a/bhi"
    assert P.publish_packet("a/b", b"hi", 1, False, 10) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert P.publish_packet("a/b", b"", 1, True, 258, True) == b"\x3b\x07\x00\x03a/b\x01\x02"
    assert P.with_dup(P.publish_packet("a", b"x", 1, False, 1))[0] == 0x3A
    long = P.publish_packet("t", b"x" * 200)
    assert long[:3] == b"\x30\xcb\x01" and len(long) == 3 + 203


def test_publish_packet_refusals():
    for topic in ("", "a/+", "a/#", "a\x00b"):
        raises(M.LocalProtocolError, P.publish_packet, topic, b"x")
    raises(M.LocalProtocolError, P.publish_packet, "a", b"x", 2, False, 1)
    raises(M.LocalProtocolError, P.publish_packet, "a", b"x", 1, False, 0)
    raises(M.LocalProtocolError, P.publish_packet, "a", b"x", 1, False, 65536)
    raises(M.LocalProtocolError, P.publish_packet, "a", b"x", 0, False, 5)


def test_subscribe_puback_packets():
    assert P.subscribe_packet(1, "a/+/c", 1) == b"\x82\x0a\x00\x01\x00\x05a/+/c\x01"
    assert P.puback_packet(0x1234) == b"\x40\x02\x12\x34"
    raises(M.LocalProtocolError, P.subscribe_packet, 1, "", 1)


# ---------------------------------------------------------------- packets in


def test_parse_packets():
    assert P.parse_packet(0x20, b"\x01\x00") == (P.CONNACK, True, 0)
    assert P.parse_packet(0x20, b"\x00\x05") == (P.CONNACK, False, 5)
    assert P.parse_packet(0x40, b"\x00\x07") == (P.PUBACK, 7)
    assert P.parse_packet(0x90, b"\x00\x02\x01\x80") == (P.SUBACK, 2, b"\x01\x80")
    assert P.parse_packet(0xB0, b"\x00\x03") == (P.UNSUBACK, 3)
    assert P.parse_packet(0xD0, b"") == (P.PINGRESP,)
    got = P.parse_packet(0x3B, b"\x00\x03a/b\x00\x09hello")
    assert got == (P.PUBLISH, "a/b", b"hello", 1, True, True, 9)
    assert P.parse_packet(0x30, b"\x00\x01t") == (P.PUBLISH, "t", b"", 0, False, False, 0)


def test_parse_malformed_packets():
    bad = (
        (0x36, b"\x00\x01t\x00\x01"),  # QoS 3
        (0x34, b"\x00\x01t\x00\x01"),  # QoS 2: never subscribed at 2
        (0x38, b"\x00\x01tx"),  # DUP on QoS 0
        (0x30, b"\x00"),  # too short
        (0x30, b"\x00\x05ab"),  # topic runs past the end
        (0x32, b"\x00\x01t\x00"),  # no room for the packet id
        (0x32, b"\x00\x01t\x00\x00"),  # packet id 0
        (0x30, b"\x00\x02\xff\xfe"),  # topic not UTF-8
        (0x30, b"\x00\x03a/#"),  # wildcard in a received topic
        (0x30, b"\x00\x00x"),  # empty topic
        (0x20, b"\x00"),  # CONNACK too short
        (0x20, b"\x02\x00"),  # CONNACK reserved flag bits
        (0x20, b"\x00\x06"),  # CONNACK reserved return code
        (0x21, b"\x00\x00"),  # reserved fixed-header flags
        (0x40, b"\x00\x01\x00"),  # PUBACK length
        (0x40, b"\x00\x00"),  # PUBACK packet id 0
        (0x90, b"\x00\x01"),  # SUBACK without codes
        (0x90, b"\x00\x01\x03"),  # SUBACK unknown code
        (0xD0, b"\x00"),  # PINGRESP with a body
        (0x10, b""),  # CONNECT is never sent by a broker
        (0x62, b"\x00\x01"),  # PUBREL: no QoS 2 here
        (0xF0, b""),  # reserved type
        (0x00, b""),  # reserved type
    )
    for first, body in bad:
        raises(M.RemoteProtocolError, P.parse_packet, first, body)


def test_split_packet_and_size_limit():
    buf = bytearray(b"\x40\x02\x00\x01\xd0\x00\x30")
    assert P.split_packet(buf, 100) == (0x40, b"\x00\x01", 4)
    assert P.split_packet(b"\x30\x05ab", 100) is None
    assert P.split_packet(b"\x30", 100) is None
    # refused from the header alone, before the body has arrived
    exc = raises(M.PacketTooLarge, P.split_packet, b"\x30\x80\x08", 1024)
    assert isinstance(exc, M.RemoteProtocolError) and isinstance(exc, M.MQTTError)
    assert P.split_packet(b"\x30\xfd\x07" + b"\x00" * 1021, 1024)[2] == 1024


# ---------------------------------------------------------------- the client


def test_connect_sends_connect_and_reads_connack():
    client = _client(keepalive=30, clean=False)
    client.set_last_will("camfleet/v1/node-0001/status", b"{}", 1, True)
    sock = FakeSocket(CONNACK_SESSION)
    assert client.connect(sock) is True
    assert client.connected and client.sock is sock
    will = ("camfleet/v1/node-0001/status", b"{}", 1, True)
    assert bytes(sock.sent) == P.connect_packet("node-0001", 30, False, will)


def test_connect_refused_and_timeout():
    client = _client()
    sock = FakeSocket(b"\x20\x02\x00\x05")
    exc = raises(M.ConnectRefused, client.connect, sock)
    assert exc.code == 5 and "not authorized" in str(exc)
    assert sock.closed and not client.connected and client.sock is None
    silent = FakeSocket()
    raises(M.AckTimeout, _client().connect, silent)
    assert silent.closed


def test_connect_first_packet_must_be_connack():
    sock = FakeSocket(b"\x40\x02\x00\x01" + CONNACK_OK)
    raises(M.RemoteProtocolError, _client().connect, sock)


def test_publish_qos0_exact_bytes():
    client, sock = _connected()
    assert client.publish("a/b", b"hi", 0, True) == 0
    assert bytes(sock.sent) == b"\x31\x07\x00\x03a/bhi"
    assert client.inflight() == []


def test_publish_qos1_waits_for_puback():
    client, sock = _connected()
    sock.reply[0x32] = b"\x40\x02\x00\x01"
    assert client.publish("a/b", b"hi", 1) == 1
    assert bytes(sock.sent) == b"\x32\x09\x00\x03a/b\x00\x01hi"
    assert client.inflight() == []
    sock.reply[0x32] = b"\x40\x02\x00\x02"
    assert client.publish("a/b", b"again", 1) == 2


def test_publish_qos1_timeout_then_resent_with_dup_on_reconnect():
    client, sock = _connected(clean=False)
    raises(M.AckTimeout, client.publish, "a/b", b"hi", 1)
    assert bytes(sock.sent) == b"\x32\x09\x00\x03a/b\x00\x01hi"
    assert client.inflight() == [1]
    client.close()
    again = FakeSocket(CONNACK_SESSION)
    client.connect(again)
    connect = P.connect_packet("node-0001", 30, False)
    # same packet id, DUP set
    assert bytes(again.sent) == connect + b"\x3a\x09\x00\x03a/b\x00\x01hi"
    again.feed(b"\x40\x02\x00\x01")
    client.poll()
    assert client.inflight() == []


def test_clean_session_drops_unacknowledged():
    client, _sock = _connected(clean=True)
    raises(M.AckTimeout, client.publish, "a/b", b"hi", 1)
    again = FakeSocket(CONNACK_OK)
    client.connect(again)
    assert client.inflight() == []
    assert bytes(again.sent) == P.connect_packet("node-0001", 30, True)


def test_subscribe_granted_and_refused():
    client, sock = _connected()
    sock.reply[0x82] = b"\x90\x03\x00\x01\x01"
    assert client.subscribe("camfleet/v1/node-0001/cmd/req", 1) == 1
    assert bytes(sock.sent) == P.subscribe_packet(1, "camfleet/v1/node-0001/cmd/req", 1)
    sock.reply[0x82] = b"\x90\x03\x00\x02\x80"
    raises(M.SubscribeRefused, client.subscribe, "camfleet/v1/other/cmd/req", 1)


def test_incoming_publish_qos1_delivered_and_acked():
    got = []
    client, sock = _connected()
    client.on_message = lambda topic, payload, retain: got.append((topic, payload, retain))
    sock.feed(b"\x33\x0c\x00\x03a/b\x12\x34hello")
    sock.feed(b"\x30\x06\x00\x01cxyz")
    client.poll()
    assert got == [("a/b", b"hello", True), ("c", b"xyz", False)]
    assert bytes(sock.sent) == b"\x40\x02\x12\x34"  # PUBACK for the QoS 1 one only


def test_packets_split_across_reads():
    got = []
    client = _client()
    sock = FakeSocket(CONNACK_OK, chunk=1)
    client.connect(sock)
    client.on_message = lambda topic, payload, retain: got.append(payload)
    sock.feed(b"\x30\x82\x01\x00\x01t" + b"p" * 127)
    for _ in range(200):
        client.poll()
    assert got == [b"p" * 127]


def test_oversized_publish_acked_and_skipped_without_holding_it():
    got, big = [], []
    client = _client(max_packet=256)
    sock = FakeSocket(CONNACK_OK, chunk=100)
    client.connect(sock)
    sock.sent = bytearray()
    client.on_message = lambda topic, payload, retain: got.append((topic, payload))
    client.on_oversized = lambda topic, size: big.append((topic, size))
    # QoS 1, remaining length 1000: topic "a/b", pid 0x0102, 993 bytes of payload
    sock.feed(b"\x32\xe8\x07\x00\x03a/b\x01\x02" + b"x" * 993)
    sock.feed(b"\x30\x06\x00\x01cxyz")  # an ordinary one right behind it
    for _ in range(40):
        client.poll()
        assert len(client._rx) <= 256, "never holds the oversized packet"
    assert big == [("a/b", 1003)]
    assert got == [("c", b"xyz")]
    assert bytes(sock.sent) == b"\x40\x02\x01\x02"  # PUBACK: the broker will not resend it


def test_oversized_other_packets_refused_from_header():
    client, sock = _connected(max_packet=256)
    sock.feed(b"\x90\x80\x02\x00\x01")  # a 256-byte SUBACK: nothing the client skips
    raises(M.PacketTooLarge, client.poll)
    client, sock = _connected(max_packet=256)
    sock.feed(b"\x30\x80\x02\x01\x00" + b"t" * 10)  # a topic of 256 bytes: malformed
    raises(M.RemoteProtocolError, client.poll)
    assert P.publish_prefix(b"\x32\xe8", 256) is None  # header still incomplete
    assert P.publish_prefix(b"\x32\xe8\x07\x00\x03a/", 256) is None
    assert P.publish_prefix(b"\x30\xe8\x07\x00\x01t", 256) == ("t", 0, 0, 1003)


def test_unsubscribe_waits_for_unsuback():
    client, sock = _connected()
    sock.reply[0xA2] = b"\xb0\x02\x00\x01"
    client.unsubscribe("camfleet/v1/box-0001/heartbeat")
    assert bytes(sock.sent) == b"\xa2\x22\x00\x01\x00\x1ecamfleet/v1/box-0001/heartbeat"
    assert P.unsubscribe_packet(7, "a/#") == b"\xa2\x07\x00\x07\x00\x03a/#"
    raises(M.AckTimeout, client.unsubscribe, "x")  # no UNSUBACK: timeout


def test_malformed_incoming_packet_is_remote_error():
    client, sock = _connected()
    sock.feed(b"\x36\x05\x00\x01t\x00\x01")
    raises(M.RemoteProtocolError, client.poll)
    client2, sock2 = _connected()
    sock2.feed(CONNACK_OK)
    raises(M.RemoteProtocolError, client2.poll)


def test_broker_closing_is_network_error():
    client, sock = _connected()
    sock.eof = True
    exc = raises(M.NetworkError, client.poll)
    assert "closed" in str(exc)
    assert sock.closed and client.sock is None
    raises(M.NetworkError, client.publish, "a", b"x")


def test_keepalive_ping_and_pingresp():
    client, sock = _connected(keepalive=10)
    start = client._last_tx
    client.poll(now=start + 9999)
    assert bytes(sock.sent) == b""
    client.poll(now=start + 10000)
    assert bytes(sock.sent) == b"\xc0\x00"
    client.poll(now=start + 15000)
    assert bytes(sock.sent) == b"\xc0\x00", "one PINGREQ at a time"
    sock.feed(b"\xd0\x00")
    client.poll(now=start + 15000)
    assert client._ping_at is None
    assert bytes(sock.sent) == b"\xc0\x00"
    client.poll(now=start + 20000)
    assert bytes(sock.sent) == b"\xc0\x00\xc0\x00", "next PINGREQ a keepalive later"


def test_keepalive_without_pingresp_times_out():
    client, sock = _connected(keepalive=10)
    start = client._last_tx
    client.poll(now=start + 10000)
    raises(M.AckTimeout, client.poll, start + 20000)
    assert sock.closed


def test_disconnect_sends_disconnect():
    client, sock = _connected()
    client.disconnect()
    assert bytes(sock.sent) == b"\xe0\x00"
    assert sock.closed and not client.connected


def test_partial_writes_are_completed():
    client = _client()
    sock = FakeSocket(CONNACK_OK, write_chunk=3)
    client.connect(sock)
    assert bytes(sock.sent) == P.connect_packet("node-0001", 30, False)


def test_packet_ids_wrap_and_skip_inflight():
    client, _sock = _connected()
    client._pid = 65534
    client._inflight[1] = b"x"
    assert client._next_pid() == 65535
    assert client._next_pid() == 2


def test_error_tree():
    for leaf in (
        M.LocalProtocolError,
        M.RemoteProtocolError,
        M.PacketTooLarge,
        M.NetworkError,
        M.TLSError,
        M.SubscribeRefused,
        M.AckTimeout,
    ):
        assert issubclass(leaf, M.MQTTError)
    assert issubclass(M.TLSError, M.NetworkError)
    assert issubclass(M.PacketTooLarge, M.RemoteProtocolError)
    assert isinstance(M.ConnectRefused(5), M.MQTTError)
