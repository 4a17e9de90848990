"""Revocation on the real broker: the revoked device's live session is closed, it cannot get
back in, and it cannot renew; another device stays connected throughout. Also: the CRL is
kept fresh (an expired CRL would make Mosquitto refuse everyone)."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.identity import est_client
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import read_crl
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("revoke-server"), ca, broker)
    srv.start_all()
    yield srv
    srv.stop()


class Device:
    """A device enrolled through EST, connected with paho; records connects/disconnects."""

    def __init__(self, server: IdentityServer, device_id: str, tmp: Path) -> None:
        self.device_id = device_id
        key = est_client.new_key()
        cert = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
            est_client.make_csr(key, device_id), server.token(device_id), device_id
        )
        self.key = tmp / f"{device_id}.key"
        self.cert = tmp / f"{device_id}.pem"
        self.key.write_bytes(est_client.key_pem(key))
        self.cert.write_bytes(est_client.pem(cert))
        self.root = server.ca.root_cert_path
        self.connected = threading.Event()
        self.disconnects: list[str] = []

    def client(self) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        c.tls_set(ca_certs=str(self.root), certfile=str(self.cert), keyfile=str(self.key))
        c.on_connect = lambda *_a: self.connected.set()

        def on_disconnect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
            self.connected.clear()
            self.disconnects.append(str(rc))

        c.on_disconnect = on_disconnect
        return c


def test_revoked_device_is_disconnected_and_cannot_reconnect_or_renew(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    bad = Device(server, "rv-stolen-01", tmp_path)
    good = Device(server, "rv-honest-01", tmp_path)
    bad_client, good_client = bad.client(), good.client()
    for dev, client in ((bad, bad_client), (good, good_client)):
        client.connect("localhost", broker.port, keepalive=30)
        client.loop_start()
        wait_for(dev.connected.is_set, 10, what=f"{dev.device_id} connected")
    # the stolen box said it is online (retained status, as a device does after connecting)
    topic, payload, qos, retain = contract.encode(
        "status", bad.device_id, {"state": "online", "kind": "agent"}, time.time()
    )
    bad_client.publish(topic, payload, qos, retain).wait_for_publish(10)

    def online() -> bool:
        status, dev = server.call("GET", "/api/devices/rv-stolen-01")
        return status == 200 and dev["state"] == "online"

    wait_for(online, 20, what="the stolen box online at the server")
    try:
        status, body = server.call(
            "POST", "/api/devices/rv-stolen-01/revoke", {"reason": "stolen from pole 17"}
        )
        assert status == 200 and body["disconnected"] and body["broker_reloaded"]
        # the live session is closed by the broker ("administrative action", 0x98)
        wait_for(lambda: bool(bad.disconnects), 10, what="revoked device disconnected")
        assert "Administrative action" in bad.disconnects[0]
        # its will cannot reach the server any more: the registry marks it offline itself
        status, dev = server.call("GET", "/api/devices/rv-stolen-01")
        assert status == 200 and (dev["state"], dev["state_reason"]) == ("offline", "revoked")
        # a new connection is refused at the TLS handshake (the CRL)
        again = bad.client()
        with pytest.raises((ssl.SSLError, OSError)):
            again.connect("localhost", broker.port, keepalive=30)
            again.loop_start()
            wait_for(lambda: bool(bad.disconnects[1:]), 10, what="refused reconnect")
            raise OSError("refused after the handshake")
        assert not bad.connected.is_set()
        again.loop_stop()
        # renewal refused too
        renew = est_client.EstClient(
            server.est_url, server.ca.root_cert_path, cert=bad.cert, key=bad.key
        )
        with pytest.raises(est_client.EstError) as info:
            renew.simplereenroll(est_client.make_csr(est_client.load_key(bad.key), bad.device_id))
        assert info.value.status == 403
        # the honest device never noticed
        assert good.connected.is_set() and not good.disconnects
        crl = read_crl(server.ca)
        assert crl is not None and len(list(crl)) >= 1
    finally:
        for client in (bad_client, good_client):
            client.disconnect()
            client.loop_stop()


def test_crl_is_refreshed_before_it_expires(server: IdentityServer) -> None:
    """The keeper rewrites a CRL with less than half its life left; the broker keeps
    accepting clients (an expired CRL would refuse them all)."""
    from fleet_server.config import ServerSettings
    from fleet_server.db import make_engine, make_sessionmaker
    from fleet_server.identity.ca_ops import write_crl
    from fleet_server.identity.revocation import Revoker

    settings = ServerSettings(data_dir=server.config_path.parent, pki_path=server.ca.dir)
    engine = make_engine(settings.db_url())
    revoker = Revoker(make_sessionmaker(engine), server.ca, settings)
    try:
        assert not revoker.crl_needs_refresh()
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
        assert revoker.crl_needs_refresh(soon)
        write_crl(server.ca, [], days=0.001)  # nearly expired
        assert revoker.crl_needs_refresh()
        revoker.write_crl()
        assert not revoker.crl_needs_refresh()
        crl = read_crl(server.ca)
        assert crl is not None and crl.next_update_utc is not None
        assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
        # the revocations survive the rewrite
        assert len(list(crl)) >= 1
    finally:
        engine.dispose()
