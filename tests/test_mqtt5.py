"""The server's lean MQTT v5 client: byte-exact packets, a parser fed in pieces and in
heaps, and the client against the real Mosquitto (interop with paho, properties)."""

from __future__ import annotations

import random
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.identity import server_identity
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ingest import codec as mqtt5
from fleet_server.ingest.client import ClientSettings, Mqtt5Client
from fleet_server.ingest.codec import Ack, ConnAck, Disconnect, PingResp, Publish
from hil_tests.procs import Broker, wait_for

ROOT = contract.TOPIC_ROOT


# ---------------------------------------------------------------- byte-exact encoders
@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
     (16384, b"\x80\x80\x01"), (2097152, b"\x80\x80\x80\x01"),
     (268435455, b"\xff\xff\xff\x7f")],
)  # fmt: skip
def test_varint(n: int, encoded: bytes) -> None:
    assert mqtt5.varint(n) == encoded


def test_small_packets_byte_exact() -> None:
    assert mqtt5.pingreq() == b"\xc0\x00"
    assert mqtt5.puback(0x1234) == b"\x40\x02\x12\x34"
    assert mqtt5.pubacks([1, 2]) == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    # SUBSCRIBE: fixed header 0x82, packet id, empty properties, filter, options (QoS 1)
    assert mqtt5.subscribe(7, [("a/b", 1)]) == b"\x82\x09\x00\x07\x00\x00\x03a/b\x01"
    assert mqtt5.unsubscribe(8, ["a/b"]) == b"\xa2\x08\x00\x08\x00\x00\x03a/b"
    # DISCONNECT, reason 0, session expiry 0
    assert mqtt5.disconnect(0, 0) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"
    # CONNECT: "MQTT", level 5, flags (no clean start), keepalive 30, session expiry 3600
    assert mqtt5.connect("w1", 30, False, 3600) == (
        b"\x10\x14\x00\x04MQTT\x05\x00\x00\x1e\x05\x11\x00\x00\x0e\x10\x00\x02w1"
    )


def test_publish_round_trip_with_properties() -> None:
    data = mqtt5.publish("camfleet/d1/cmd/req", b'{"x":1}', qos=1, retain=True, packet_id=9,
                         response_topic="camfleet/d1/cmd/res", correlation=b"\x01\x02",
                         message_expiry_s=60)  # fmt: skip
    (p,) = mqtt5.Parser().feed(data)
    assert isinstance(p, Publish)
    assert (p.topic, p.payload, p.qos, p.packet_id, p.retain, p.dup) == (
        "camfleet/d1/cmd/req", b'{"x":1}', 1, 9, True, False)  # fmt: skip
    props = mqtt5.decode_properties(p.properties)
    assert props == {mqtt5.P_MESSAGE_EXPIRY: 60, mqtt5.P_RESPONSE_TOPIC: "camfleet/d1/cmd/res",
                     mqtt5.P_CORRELATION: b"\x01\x02"}  # fmt: skip
    with pytest.raises(ValueError, match="QoS"):
        mqtt5.publish("t", b"", qos=2)


# ---------------------------------------------------------------- parser
def _broker_stream(n: int) -> tuple[bytes, int]:
    """What a broker might send: CONNACK with properties, SUBACK, PUBLISHes of QoS 0/1
    (some with properties and empty payloads), PUBACK long and short, PINGRESP, DISCONNECT."""
    connack_props = mqtt5.encode_properties([(mqtt5.P_RECEIVE_MAXIMUM, 20),
                                             (mqtt5.P_ASSIGNED_ID, "auto-1")])  # fmt: skip
    parts = [bytes([0x20]) + mqtt5.varint(2 + len(connack_props)) + b"\x01\x00" + connack_props,
             b"\x90\x05\x00\x01\x00\x01\x80"]  # fmt: skip
    for i in range(n):
        payload = b"" if i % 7 == 0 else (b"x" * (i % 300))
        parts.append(mqtt5.publish(f"camfleet/dev-{i % 5}/heartbeat", payload, qos=i % 2,
                                   packet_id=(i % 65535) + 1 if i % 2 else 0,
                                   correlation=b"c" if i % 3 == 0 else None))  # fmt: skip
    parts += [b"\x40\x02\x00\x05", b"\x40\x03\x00\x06\x87", b"\xd0\x00", b"\xe0\x01\x8e"]
    return b"".join(parts), n


def _check_stream(packets: list[mqtt5.Packet], n: int) -> None:
    assert isinstance(packets[0], ConnAck)
    assert packets[0].session_present and packets[0].reason == 0
    assert packets[0].properties == {mqtt5.P_RECEIVE_MAXIMUM: 20, mqtt5.P_ASSIGNED_ID: "auto-1"}
    assert packets[1] == Ack(mqtt5.SUBACK, 1, (1, 0x80))
    pubs = packets[2 : 2 + n]
    assert all(isinstance(p, Publish) for p in pubs)
    for i, p in enumerate(pubs):
        assert isinstance(p, Publish)
        assert p.topic == f"camfleet/dev-{i % 5}/heartbeat"
        assert p.payload == (b"" if i % 7 == 0 else b"x" * (i % 300))
        assert (p.qos, p.packet_id) == ((1, i + 1) if i % 2 else (0, 0))
    assert packets[2 + n :] == [Ack(mqtt5.PUBACK, 5, (0,)), Ack(mqtt5.PUBACK, 6, (0x87,)),
                                PingResp(), Disconnect(0x8E, {})]  # fmt: skip


def test_parser_whole_stream_coalesced() -> None:
    data, n = _broker_stream(2000)
    parser = mqtt5.Parser()
    _check_stream(parser.feed(data), n)
    assert parser.buffered == 0


def test_parser_byte_by_byte() -> None:
    data, n = _broker_stream(40)
    parser = mqtt5.Parser()
    packets: list[mqtt5.Packet] = []
    for i in range(len(data)):
        packets += parser.feed(data[i : i + 1])
    _check_stream(packets, n)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parser_random_fragments(seed: int) -> None:
    data, n = _broker_stream(500)
    rng = random.Random(seed)
    parser = mqtt5.Parser()
    packets: list[mqtt5.Packet] = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 5, 17, 300, 4096, 65536])
        packets += parser.feed(data[pos : pos + step])
        pos += step
    _check_stream(packets, n)
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x36\x05\x00\x01t\x00\x00", "QoS 3"),
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x30\x02\x00\x05", "topic cut short"),
        (b"\x32\x04\x00\x01t\x00", "packet id cut short"),
        (b"\x30\x05\x00\x01t\x05\x01", "properties cut short"),
        (b"\x20\x05\x00\x00\x02\x7f\x00", "unknown property"),
        (b"\x50\x02\x00\x01", "unexpected packet type 5"),
        (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_parser_refuses_broken_packets(data: bytes, why: str) -> None:
    with pytest.raises(mqtt5.RemoteProtocolError, match=why):
        mqtt5.Parser().feed(data)


def test_parser_refuses_oversized_packet_before_reading_it() -> None:
    parser = mqtt5.Parser(max_packet=1000)
    with pytest.raises(mqtt5.RemoteProtocolError, match="over the limit"):
        parser.feed(b"\x30" + mqtt5.varint(5000) + b"\x00")


# ---------------------------------------------------------------- against Mosquitto
def _tls(ca: CertificateAuthority, client_id: str = "mqtt5-test") -> ssl.SSLContext:
    """A server worker's own identity (the broker makes a CN its client id, issue 15)."""
    return server_identity.client_context(ca, client_id)


class _Collector:
    def __init__(self) -> None:
        self.got: list[Publish] = []
        self.lock = threading.Lock()

    def __call__(self, messages: list[Publish], generation: int) -> None:
        with self.lock:
            self.got.extend(messages)


def _paho(ca: CertificateAuthority, port: int, client_id: str) -> tuple[mqtt.Client, list[Any]]:
    """A paho v5 client with the server identity that records what it receives."""
    seen: list[Any] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    cert, key = server_identity.ensure(ca, client_id)  # its own: CN = client id
    c.tls_set(ca_certs=str(ca.root_cert_path), certfile=str(cert), keyfile=str(key))
    c.on_message = lambda _c, _u, m: seen.append(m)
    c.connect("localhost", port)
    c.loop_start()
    return c, seen


@pytest.fixture
def paho_peer(broker: Broker, ca: CertificateAuthority) -> Iterator[tuple[mqtt.Client, list[Any]]]:
    c, seen = _paho(ca, broker.port, "mqtt5-peer")
    yield c, seen
    c.disconnect()
    c.loop_stop()


def test_client_receives_acks_and_publishes_through_mosquitto(
    broker: Broker, ca: CertificateAuthority, paho_peer: tuple[mqtt.Client, list[Any]]
) -> None:
    peer, seen = paho_peer
    peer.subscribe(f"{ROOT}/mqtt5-out/#", qos=1)
    got = _Collector()
    client = Mqtt5Client(
        ClientSettings("localhost", broker.port, "mqtt5-test-1", keepalive_s=5,
                       subscriptions=[(f"{ROOT}/mqtt5-in/#", 1)]),
        _tls(ca), got,
    )  # fmt: skip
    client.start()
    try:
        assert client.connected.wait(10)
        time.sleep(0.3)  # SUBACK
        infos = [peer.publish(f"{ROOT}/mqtt5-in/{i}", b"%d" % i, qos=1) for i in range(500)]
        for info in infos:
            info.wait_for_publish(5)
        wait_for(lambda: len(got.got) >= 500, 10, what="500 messages")
        assert sorted(int(p.payload) for p in got.got) == list(range(500))
        client.ack(client.generation, [p.packet_id for p in got.got if p.qos])
        client.publish(f"{ROOT}/mqtt5-out/x", b"hello", qos=1, response_topic="r/t",
                       correlation=b"\x07", message_expiry_s=30)  # fmt: skip
        wait_for(lambda: len(seen) >= 1, 10, what="paho sees our publish")
        props = seen[0].properties
        assert seen[0].payload == b"hello"
        assert (props.ResponseTopic, props.CorrelationData) == ("r/t", b"\x07")
        assert 0 < props.MessageExpiryInterval <= 30
        wait_for(lambda: not client._inflight, 5, what="PUBACK of our publish")
    finally:
        client.stop()
    assert not client.connected.is_set()


def test_client_keeps_to_the_brokers_receive_maximum(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    """More QoS 1 publishes queued than the broker's Receive Maximum (here 5): the client
    sends them as PUBACKs free the window, so the broker never disconnects it for
    exceeding it (reason 0x93), and every message arrives."""
    small = Broker(ca, tmp_path / "small")
    conf = small.layout.conf
    conf.write_text(
        conf.read_text().replace("max_inflight_messages 2000", "max_inflight_messages 5")
    )
    assert "max_inflight_messages 5" in conf.read_text()
    small.start()
    peer, seen = _paho(ca, small.port, "mqtt5-rm-peer")
    states: list[bool] = []
    client = Mqtt5Client(
        ClientSettings("localhost", small.port, "mqtt5-test-rm", keepalive_s=5),
        _tls(ca), _Collector(), on_state=states.append,
    )  # fmt: skip
    try:
        peer.subscribe(f"{ROOT}/mqtt5-rm/#", qos=1)
        time.sleep(0.3)
        client.start()
        assert client.connected.wait(10)
        assert client._send_quota == 5
        assert small.proc is not None
        small.proc.send_signal(signal.SIGSTOP)  # no PUBACK comes back while it is stopped
        try:
            for i in range(300):
                client.publish(f"{ROOT}/mqtt5-rm/{i}", b"%d" % i, qos=1)
            wait_for(lambda: len(client._inflight) >= 5, 10, what="the window filled")
            time.sleep(0.5)  # time to send more, were the client to ignore the window
            assert len(client._inflight) == 5 and len(client._outbox) == 295
        finally:
            small.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: len(seen) >= 300, 30, what="300 messages through a window of 5")
        assert sorted(int(m.payload) for m in seen) == list(range(300))
        assert states == [True], "the broker disconnected the client"
        wait_for(lambda: not client._inflight and not client._outbox, 5, what="all acked")
    finally:
        client.stop()
        peer.disconnect()
        peer.loop_stop()
        small.stop()
