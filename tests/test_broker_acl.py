"""The broker lets each certificate reach only its own subtree; nobody else gets in.

Real Mosquitto with the config and ACL the fleet server renders; paho, mosquitto_pub and
openssl s_client as clients.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware import contract
from fleet_server.broker.conf import render_acl
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker
from tests.mqtt_helpers import Client, server_creds

MakeDevice = Callable[[str], DeviceCredentials]


def _device_client(broker: Broker, creds: DeviceCredentials) -> Client:
    return Client(broker.port, creds.root_pem, creds.cert_pem, creds.key_pem, creds.device_id)


def _server_client(broker: Broker, ca: CertificateAuthority) -> Client:
    return Client(broker.port, ca.root_cert_path, *server_creds(ca))


def test_acl_is_written_with_username_patterns() -> None:
    acl = render_acl()
    assert "%c" not in acl
    assert f"pattern write {contract.TOPIC_ROOT}/%u/heartbeat" in acl
    assert f"pattern read {contract.TOPIC_ROOT}/%u/cmd/req" in acl
    assert f"user {contract.SERVER_IDENTITY}" in acl


def test_device_cannot_publish_to_another_devices_topic(
    broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    watcher = _server_client(broker, ca)
    watcher.subscribe(f"{contract.TOPIC_ROOT}/#")
    a = _device_client(broker, device_factory("acl-a"))
    try:
        a.publish(contract.topic("acl-b", "heartbeat"), b"forged")
        a.publish(contract.topic("acl-b", "status"), b"forged", retain=True)
        a.publish(contract.topic("acl-a", "event"), b"own-sentinel")
        # the sentinel on A's own topic arrives; the forged ones, sent before it, never do
        watcher.wait_for(contract.topic("acl-a", "event"))
        time.sleep(0.3)
        assert watcher.received(contract.topic("acl-b", "heartbeat")) == []
        assert watcher.received(contract.topic("acl-b", "status")) == []
    finally:
        a.close()
        watcher.close()


def test_device_cannot_write_its_own_downlink(
    broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    """A device may read commands and desired config, never write them (no self-commands)."""
    watcher = _server_client(broker, ca)
    watcher.subscribe(f"{contract.TOPIC_ROOT}/acl-c/#")
    c = _device_client(broker, device_factory("acl-c"))
    try:
        c.publish(contract.topic("acl-c", "cmd_req"), b"self-command")
        c.publish(contract.topic("acl-c", "event"), b"sentinel")
        watcher.wait_for(contract.topic("acl-c", "event"))
        time.sleep(0.3)
        assert watcher.received(contract.topic("acl-c", "cmd_req")) == []
    finally:
        c.close()
        watcher.close()


def test_device_cannot_subscribe_to_another_device(
    broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice
) -> None:
    a = _device_client(broker, device_factory("acl-d"))
    b = _device_client(broker, device_factory("acl-e"))
    server = _server_client(broker, ca)
    try:
        # Mosquitto 2.0 may grant the SUBACK; its read ACL then filters every delivery.
        a.subscribe(f"{contract.TOPIC_ROOT}/acl-e/#")
        a.subscribe(f"{contract.TOPIC_ROOT}/+/heartbeat")  # a wildcard must not leak either
        own = a.subscribe(contract.topic("acl-d", "cmd_req"))
        assert own == [1]
        b.publish(contract.topic("acl-e", "heartbeat"), b"private")
        server.publish(contract.topic("acl-d", "cmd_req"), b"for-a")
        a.wait_for(contract.topic("acl-d", "cmd_req"))  # A does receive its own downlink
        time.sleep(0.3)
        assert a.received(contract.topic("acl-e", "heartbeat")) == []
    finally:
        for cl in (a, b, server):
            cl.close()


def _mosquitto_pub(broker: Broker, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "localhost",
            "-p",
            str(broker.port),
            "-t",
            f"{contract.TOPIC_ROOT}/acl-x/heartbeat",
            "-m",
            "x",
            "-q",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_client_without_certificate_is_refused(broker: Broker, ca: CertificateAuthority) -> None:
    result = _mosquitto_pub(broker, "--cafile", str(ca.root_cert_path))
    assert result.returncode != 0
    # and at the TLS layer, seen by openssl: the handshake ends without a session
    probe = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{broker.port}",
            "-CAfile",
            str(ca.root_cert_path),
            "-verify_return_error",
            "-brief",
            # TLS 1.2: the refusal comes inside the handshake. With TLS 1.3 the client may
            # finish and leave before the server's alert arrives, and see nothing.
            "-tls1_2",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert "alert" in (probe.stderr + probe.stdout).lower()


def test_plain_mqtt_without_tls_is_refused(broker: Broker) -> None:
    result = _mosquitto_pub(broker)
    assert result.returncode != 0


def test_certificate_from_another_ca_is_refused(
    broker: Broker, ca: CertificateAuthority, tmp_path: Path
) -> None:
    rogue = CertificateAuthority(tmp_path / "rogue")
    rogue.init()
    creds = rogue.issue_device("acl-x", tmp_path / "rogue-dev")
    result = _mosquitto_pub(
        broker,
        "--cafile",
        str(ca.root_cert_path),
        "--cert",
        str(creds.cert_pem),
        "--key",
        str(creds.key_pem),
    )
    assert result.returncode != 0
    # the same command with a certificate from our CA goes through: the refusal is the CA
    ours = ca.issue_device("acl-x", tmp_path / "ours")
    ok = _mosquitto_pub(
        broker,
        "--cafile",
        str(ca.root_cert_path),
        "--cert",
        str(ours.cert_pem),
        "--key",
        str(ours.key_pem),
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("bad_id", ["_fleet-server", "UPPER", "a/b", "+", "x"])
def test_ca_refuses_device_ids_that_could_escape_the_acl(
    ca: CertificateAuthority, tmp_path: Path, bad_id: str
) -> None:
    from fleet_server.identity.ca import CAError

    with pytest.raises(CAError):
        ca.issue_device(bad_id, tmp_path / "bad")


def test_broker_config_command_renders_the_node_box_pairs(tmp_path: Path) -> None:
    """The operator names the pairs in the server config; broker-config writes them."""
    cfg = tmp_path / "server.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}"\n[broker]\nlisten_port = 18883\n'
        '[broker.pairs]\n"node-0001" = "cam-0001"\n'
    )
    cli = [sys.executable, "-m", "fleet_server.cli", "--config", str(cfg)]
    assert subprocess.run([*cli, "init"], capture_output=True, check=False).returncode == 0
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "user node-0001\ntopic read camfleet/v1/cam-0001/heartbeat" in acl
    cfg.write_text(cfg.read_text().replace('"cam-0001"', '"cam/#"'))
    bad = subprocess.run([*cli, "broker-config"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "both must be device ids" in bad.stderr
    assert (tmp_path / "broker" / "acl").read_text() == acl  # nothing changed
