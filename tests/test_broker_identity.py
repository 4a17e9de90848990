"""Identity at the broker (issue 15, item 3), on the real TLS Mosquitto with the config the
server renders and its camfleet_acl plugin; the attackers are raw MQTT clients holding one
valid device certificate. A client id is its certificate's CN, whatever it asks for; a
device's SUBSCRIBE outside its own subtree gets a SUBACK failure code."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from firmware import contract
from fleet_server.broker.conf import acl_plugin, write_broker_config
from fleet_server.identity import server_identity
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client

MakeDevice = Callable[[str], DeviceCredentials]
GRANTED_QOS1 = 1
NOT_AUTHORIZED = 0x87  # MQTT 5 SUBACK reason "Not authorized"
FAILURE_V311 = 0x80  # MQTT 3.1.1 SUBACK "Failure"


@pytest.fixture(scope="module")
def idbroker(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    broker = Broker(ca, tmp_path_factory.mktemp("id-broker")).start()
    yield broker
    broker.stop()


def _raw_v311_suback(broker: Broker, creds: DeviceCredentials, client_id: str,
                     filters: list[str]) -> list[int]:  # fmt: skip
    """CONNECT and one SUBSCRIBE by hand (MQTT 3.1.1 bytes on a TLS socket): the SUBACK
    return codes, one per filter, exactly as the broker sent them."""
    ctx = ssl.create_default_context(cafile=str(creds.root_pem))
    ctx.load_cert_chain(str(creds.cert_pem), str(creds.key_pem))

    def utf8(s: str) -> bytes:
        return struct.pack("!H", len(s.encode())) + s.encode()

    def remaining(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n % 128, n // 128
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def packet(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + remaining(len(body)) + body

    def read_packet(sock: ssl.SSLSocket) -> tuple[int, bytes]:
        head = sock.recv(1)
        mult, length = 1, 0
        while True:
            b = sock.recv(1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        return head[0], body

    raw = socket.create_connection(("localhost", broker.port), timeout=10)
    with raw, ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        connect = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + utf8(client_id)
        sock.sendall(packet(0x10, connect))
        kind, body = read_packet(sock)
        assert kind == 0x20 and body[1] == 0, (kind, body)  # CONNACK accepted
        sub = struct.pack("!H", 7) + b"".join(utf8(f) + b"\x01" for f in filters)
        sock.sendall(packet(0x82, sub))
        kind, body = read_packet(sock)
        assert kind == 0x90 and body[:2] == struct.pack("!H", 7), (kind, body)
        return list(body[2:])


def test_a_device_subscribe_outside_its_subtree_is_refused_at_suback(
    idbroker: Broker, device_factory: MakeDevice
) -> None:
    assert acl_plugin() is not None  # the test broker runs the plugin (hil_tests builds it)
    me = device_factory("sub-cam-1")
    device_factory("sub-cam-2")
    own = [contract.topic(me.device_id, "cmd_req"), contract.topic(me.device_id, "config_desired"),
           f"{contract.TOPIC_ROOT}/{me.device_id}/#"]  # fmt: skip
    foreign = [
        contract.topic("sub-cam-2", "cmd_req"),  # another device's commands
        contract.topic("sub-cam-2", "heartbeat"),
        f"{contract.TOPIC_ROOT}/+/heartbeat",  # every device's
        f"{contract.TOPIC_ROOT}/#",
        "#",
        "+/+/sub-cam-1/#",  # its own topics, through a wildcard above its subtree
        "$SYS/#",
        "$SYS/broker/clients/connected",
        # the server's shared group
        f"$share/{contract.SERVER_SHARE_GROUP}/{contract.TOPIC_ROOT}/+/heartbeat",
        f"$share/{contract.SERVER_SHARE_GROUP}/{contract.TOPIC_ROOT}/+/event",
        f"$share/x/{contract.topic(me.device_id, 'cmd_req')}",  # any shared group at all
        "$CONTROL/dynamic-security/v1/response",
        contract.ALERTS_TOPIC,
    ]
    client = Client(idbroker.port, me.root_pem, me.cert_pem, me.key_pem, me.device_id)
    try:
        for f in own:
            assert client.subscribe(f) == [GRANTED_QOS1], f
        for f in foreign:
            assert client.subscribe(f) == [NOT_AUTHORIZED], f
    finally:
        client.close()
    # the same through hand-made MQTT 3.1.1 packets: one SUBSCRIBE, one code per filter
    codes = _raw_v311_suback(idbroker, me, me.device_id, own + foreign)
    assert codes == [GRANTED_QOS1] * len(own) + [FAILURE_V311] * len(foreign)
    refused = idbroker.log_text().count("camfleet_acl: refused SUBSCRIBE")
    assert refused >= 2 * len(foreign)


class Watch:
    """A paho client that records whether it is connected and why it was dropped."""

    def __init__(self, broker: Broker, root: Path, cert: Path, key: Path, client_id: str) -> None:
        self.up = threading.Event()
        self.drops: list[str] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)  # fmt: skip
        self.c.tls_set(ca_certs=str(root), certfile=str(cert), keyfile=str(key))
        self.c.on_connect = lambda *_a: self.up.set()
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: (
            self.drops.append(str(rc)),
            self.up.clear(),
        )
        self.c.connect("localhost", broker.port, keepalive=30)
        self.c.loop_start()
        wait_for(self.up.is_set, 10, what=f"{client_id} connected")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_device_cannot_take_another_client_id(
    idbroker: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    victim = device_factory("id-victim-1")
    thief = device_factory("id-thief-1")
    server_cert, server_key = server_identity.ensure(ca, "fleet-server-7")
    v = Watch(idbroker, victim.root_pem, victim.cert_pem, victim.key_pem, victim.device_id)
    srv = Watch(idbroker, ca.root_cert_path, server_cert, server_key, "_fleet-server-7")
    stolen = ["id-victim-1", "_fleet-server-7", "fleet-server-7", "_fleet-server", ""]
    try:
        for cid in stolen:  # each: connect with a taken id, subscribe, hold, reconnect
            for _ in range(2):
                codes = _raw_v311_suback(
                    idbroker, thief, cid, [contract.topic("id-thief-1", "cmd_req")]
                )
                assert codes == [GRANTED_QOS1]  # it is connected: as itself
        time.sleep(0.5)
        assert v.up.is_set() and not v.drops  # nobody was kicked off
        assert srv.up.is_set() and not srv.drops
        log = idbroker.log_text()
        assert "as id-victim-1 (p5, c1, k30, u'id-victim-1')" in log
        for cid in stolen:  # the broker replaced the asked-for id with the certificate's
            assert f"as {cid} (p2, c1, k30, u'id-thief-1')" not in log
        assert log.count("as id-thief-1 (p2, c1, k30, u'id-thief-1')") == 2 * len(stolen)
    finally:
        v.close()
        srv.close()


def test_server_identities_are_per_worker_and_issued_by_the_fleet_ca(
    ca: CertificateAuthority,
) -> None:
    cert_path, key_path = server_identity.ensure(ca, "fleet-server-3-ingest-2")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "_fleet-server-3-ingest-2" and not contract.valid_device_id(str(cn))
    issuing = x509.load_pem_x509_certificate((ca.dir / "issuing.pem").read_bytes())
    assert cert.issuer == issuing.subject
    assert (key_path.stat().st_mode & 0o777) == 0o600
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 29 <= life.days <= 31  # renewed like a device's, at two thirds of its life
    again, _ = server_identity.ensure(ca, "fleet-server-3-ingest-2")
    assert again.read_bytes() == cert_path.read_bytes()  # not due: kept
    assert server_identity.server_cn("fleet-server-1") == "_fleet-server-1"


def test_the_rules_are_generated_from_the_contract(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    layout = write_broker_config(ca, tmp_path, 1883, pairs={"node-a1": "box-a1"})
    conf = layout.conf.read_text()
    assert "acl_file" not in conf and "use_username_as_clientid true" in conf
    assert "plugin_opt_up_kinds status,heartbeat,event,cmd/res,config/reported,update/state" in conf
    assert "plugin_opt_down_kinds cmd/req,config/desired,update/desired,receipt" in conf
    # dynamic security first (its deny role for revoked devices), then the fleet's rules
    assert conf.index("mosquitto_dynamic_security") < conf.index("camfleet_acl.so")
    assert (tmp_path / "pairs").read_text().splitlines()[1:] == ["node-a1 box-a1"]
