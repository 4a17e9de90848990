"""EST enrollment against the real fleet server process, with openssl and curl as the client
(RFC 7030 bodies and content types), then the new certificate on the real broker; refusals
of bad requests and tokens, each a 4xx that stores nothing."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.orm import Session

from agent.identity import est_client
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.model import AuditEntry, EnrollmentToken, IssuedCertificate
from fleet_server.identity.tokens import token_hash
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("est-server"), ca, broker)
    srv.start_all()
    yield srv
    srv.stop()


def _db(server: IdentityServer) -> Session:
    engine = create_engine(f"sqlite:///{server.config_path.parent / 'fleet.db'}")
    return Session(engine)


def _certs_of(server: IdentityServer, device_id: str) -> int:
    with _db(server) as db:
        n = db.scalar(
            select(func.count())
            .select_from(IssuedCertificate)
            .where(IssuedCertificate.device_id == device_id)
        )
        return int(n or 0)


def _token_used(server: IdentityServer, token: str) -> bool:
    with _db(server) as db:
        row = db.get(EnrollmentToken, token_hash(token))
        assert row is not None
        return row.used_at is not None


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=True)


def _curl(server: IdentityServer, tmp: Path, op: str, *extra: str) -> tuple[int, str, bytes]:
    """curl alone: (HTTP status, content type, body)."""
    out = tmp / f"{op}.out"
    res = _run(
        "curl",
        "-sS",
        "--cacert",
        str(server.ca.root_cert_path),
        "-o",
        str(out),
        "-w",
        "%{http_code} %{content_type}",
        *extra,
        f"{server.est_url}/.well-known/est/{op}",
        cwd=tmp,
    )
    code, _, ctype = res.stdout.partition(" ")
    return int(code), ctype, out.read_bytes()


def _openssl_csr(tmp: Path, cn: str) -> Path:
    """A P-256 key and a base64 DER CSR made by openssl alone."""
    _run(
        "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem", cwd=tmp
    )
    _run(
        "openssl", "req", "-new", "-key", "key.pem", "-subj", f"/CN={cn}",
        "-outform", "DER", "-out", "csr.der", cwd=tmp,
    )  # fmt: skip
    _run("openssl", "base64", "-in", "csr.der", "-out", "csr.b64", cwd=tmp)
    return tmp / "csr.b64"


def test_enroll_with_openssl_and_curl_then_connect_to_broker(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    device = "est-curl-01"
    token = server.token(device)
    # cacerts: base64 PKCS#7 certs-only with the issuing CA and the root
    code, ctype, body = _curl(server, tmp_path, "cacerts")
    assert code == 200 and ctype.startswith("application/pkcs7-mime")
    (tmp_path / "cacerts.p7").write_bytes(base64.b64decode(body))
    listed = _run(
        "openssl", "pkcs7", "-inform", "DER", "-in", "cacerts.p7", "-print_certs", cwd=tmp_path
    ).stdout
    assert "camfleet root CA" in listed and "camfleet issuing CA" in listed

    csr = _openssl_csr(tmp_path, device)
    code, ctype, body = _curl(
        server,
        tmp_path,
        "simpleenroll",
        "-u",
        f"{device}:{token}",
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{csr}",
    )
    assert code == 200, body
    assert ctype.startswith("application/pkcs7-mime") and "certs-only" in ctype
    (tmp_path / "cert.p7").write_bytes(base64.b64decode(body))
    _run(
        "openssl", "pkcs7", "-inform", "DER", "-in", "cert.p7", "-print_certs",
        "-out", "cert.pem", cwd=tmp_path,
    )  # fmt: skip
    subject = _run("openssl", "x509", "-in", "cert.pem", "-noout", "-subject", cwd=tmp_path)
    assert f"CN = {device}" in subject.stdout
    _run("openssl", "verify", "-CAfile", str(server.ca.bundle_path), "cert.pem", cwd=tmp_path)
    assert _token_used(server, token) and _certs_of(server, device) == 1

    # the new certificate on the real broker: connect, publish, the server sees the device
    client = Client(
        broker.port, server.ca.root_cert_path, tmp_path / "cert.pem", tmp_path / "key.pem", device
    )
    try:
        assert client.subscribe(contract.topic(device, "cmd_req")) == [1]
        topic, payload, qos, retain = contract.encode(
            "status", device, {"state": "online", "kind": "agent"}, time.time()
        )
        client.publish(topic, payload, qos, retain)
        wait_for(lambda: server.device(device) is not None, 10, what="device in the registry")
    finally:
        client.close()


def test_renewal_over_mutual_tls_with_curl(server: IdentityServer, tmp_path: Path) -> None:
    device = "est-renew-01"
    key = est_client.new_key()
    first = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
        est_client.make_csr(key, device), server.token(device), device
    )
    (tmp_path / "key.pem").write_bytes(est_client.key_pem(key))
    (tmp_path / "cert.pem").write_bytes(est_client.pem(first))
    (tmp_path / "csr.b64").write_bytes(base64.b64encode(est_client.make_csr(key, device)))
    args = ("-H", "Content-Type: application/pkcs10", "--data-binary", "@csr.b64")
    # without a client certificate: refused
    code, _, body = _curl(server, tmp_path, "simplereenroll", *args)
    assert code == 401 and body.startswith(b"no_client_cert")
    # with it: a new certificate for the same device
    code, _, body = _curl(
        server, tmp_path, "simplereenroll", "--cert", "cert.pem", "--key", "key.pem", *args
    )
    assert code == 200, body
    renewed = est_client.parse_certs_only(body)[0]
    assert renewed.subject == first.subject and renewed.serial_number != first.serial_number
    assert _certs_of(server, device) == 2
    # the first certificate is superseded: it cannot renew again (issue 15)
    code, _, body = _curl(
        server, tmp_path, "simplereenroll", "--cert", "cert.pem", "--key", "key.pem", *args
    )
    assert code == 403 and body.startswith(b"cert_superseded")
    (tmp_path / "cert.pem").write_bytes(est_client.pem(renewed))
    # a CSR for another device over this device's TLS identity: refused
    (tmp_path / "other.b64").write_bytes(base64.b64encode(est_client.make_csr(key, "est-other")))
    code, _, body = _curl(
        server, tmp_path, "simplereenroll", "--cert", "cert.pem", "--key", "key.pem",
        "-H", "Content-Type: application/pkcs10", "--data-binary", "@other.b64",
    )  # fmt: skip
    assert code == 400 and body.startswith(b"wrong_subject")
    # revoked: renewal refused
    status, _ = server.call("POST", f"/api/devices/{device}/revoke", {"reason": "test"})
    assert status == 200
    code, _, body = _curl(
        server, tmp_path, "simplereenroll", "--cert", "cert.pem", "--key", "key.pem", *args
    )
    assert code == 403 and body.startswith(b"device_revoked")
    assert _certs_of(server, device) == 2


def _bad_bodies(tmp: Path, device: str) -> dict[str, tuple[bytes, int, str]]:
    """name -> (body, expected status, expected reason)."""
    key = est_client.new_key()
    other = base64.b64encode(est_client.make_csr(key, "someone-else"))
    _run("openssl", "genrsa", "-out", "rsa.pem", "512", cwd=tmp)
    _run(
        "openssl", "req", "-new", "-key", "rsa.pem", "-subj", f"/CN={device}",
        "-outform", "DER", "-out", "rsa.der", cwd=tmp,
    )  # fmt: skip
    rsa512 = base64.b64encode((tmp / "rsa.der").read_bytes())
    good = bytearray(est_client.make_csr(key, device))
    good[-3] ^= 0xFF  # inside the signature: the request no longer verifies
    broken = base64.b64encode(bytes(good))
    return {
        "cn_of_another_device": (other, 400, "wrong_subject"),
        "rsa_512": (rsa512, 400, "bad_key"),
        "broken_signature": (broken, 400, "bad_signature"),
        "garbage_base64": (b"this is *not* base64 %%%", 400, "bad_base64"),
        "one_megabyte": (b"A" * (1 << 20), 413, "too_large"),
    }


def test_bad_requests_are_refused_and_store_nothing(server: IdentityServer, tmp_path: Path) -> None:
    device = "est-bad-01"
    token = server.token(device)
    client = est_client.EstClient(server.est_url, server.ca.root_cert_path)
    for name, (body, status, reason) in _bad_bodies(tmp_path, device).items():
        code, _ctype, answer = client._request(
            "POST",
            "simpleenroll",
            body,
            {"Content-Type": "application/pkcs10", "Authorization": f"Bearer {token}"},
        )
        assert (code, answer.split(b":")[0].decode()) == (status, reason), name
        assert not _token_used(server, token), name
        assert _certs_of(server, device) == 0, name
    # wrong content type
    code, _, answer = client._request(
        "POST",
        "simpleenroll",
        b"x",
        {"Content-Type": "text/plain", "Authorization": f"Bearer {token}"},
    )
    assert code == 415
    # refusals are audited with their reason
    with _db(server) as db:
        outcomes = set(
            db.scalars(select(AuditEntry.outcome).where(AuditEntry.action == "est.enroll")).all()
        )
    assert {"refused:wrong_subject", "refused:bad_key", "refused:too_large"} <= outcomes
    # and the token still works for a good request afterwards
    good = est_client.make_csr(est_client.new_key(), device)
    assert client.simpleenroll(good, token, device).subject.rfc4514_string().startswith("CN=")


def test_reused_expired_unknown_and_revoked_tokens(server: IdentityServer) -> None:
    client = est_client.EstClient(server.est_url, server.ca.root_cert_path)
    key = est_client.new_key()

    def enroll(device: str, token: str) -> est_client.EstError:
        with pytest.raises(est_client.EstError) as info:
            client.simpleenroll(est_client.make_csr(key, device), token, device)
        return info.value

    # reused
    token = server.token("est-tok-01")
    client.simpleenroll(est_client.make_csr(key, "est-tok-01"), token, "est-tok-01")
    err = enroll("est-tok-01", token)
    assert (err.status, err.reason) == (401, "token_used")
    assert _certs_of(server, "est-tok-01") == 1
    # expired (the token's expiry moved into the past: no waiting)
    token = server.token("est-tok-02")
    with _db(server) as db:
        db.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.token_hash == token_hash(token))
            .values(expires_at=time.time() - 1)
        )
        db.commit()
    err = enroll("est-tok-02", token)
    assert (err.status, err.reason) == (401, "token_expired")
    # unknown, and a token of another device
    assert enroll("est-tok-03", "cfe_" + "x" * 43).status == 401
    token = server.token("est-tok-04")
    assert enroll("est-tok-05", token).reason == "bad_token"
    # revoked device: its outstanding token no longer enrolls, and no new token is given
    token = server.token("est-tok-06")
    status, _ = server.call("POST", "/api/devices/est-tok-06/revoke", {"reason": "stolen"})
    assert status == 200
    err = enroll("est-tok-06", token)
    assert (err.status, err.reason) == (403, "device_revoked")
    status, body = server.call(
        "POST", "/api/enrollment-tokens", {"device_id": "est-tok-06", "kind": "agent"}
    )
    assert status == 409, body
    for device in ("est-tok-02", "est-tok-03", "est-tok-05", "est-tok-06"):
        assert _certs_of(server, device) == 0


def test_roles_and_audit(server: IdentityServer) -> None:
    tech = server.add_user("tina", "technician")
    op = server.add_user("otto", "operator")
    # a technician makes enrollment tokens, and nothing an operator does
    status, body = server.call(
        "POST", "/api/enrollment-tokens", {"device_id": "est-role-01"}, token=tech
    )
    assert status == 201 and body["token"].startswith("cfe_")
    status, _ = server.call("POST", "/api/devices/est-role-01/revoke", {}, token=tech)
    assert status == 403
    status, _ = server.call("GET", "/api/audit", token=tech)
    assert status == 403
    status, _ = server.call("POST", "/api/users", {"name": "x", "role": "admin"}, token=op)
    assert status == 403
    status, _ = server.call("GET", "/api/audit", token="cfa_" + "n" * 43)
    assert status == 401
    # the operator reads who did what, when, from where
    status, rows = server.call("GET", "/api/audit?limit=50", token=op)
    assert status == 200
    made = [r for r in rows if r["action"] == "token.create" and r["target"] == "est-role-01"]
    assert made and made[0]["actor"] == "tina" and made[0]["source"] == "127.0.0.1"
    refused = [r for r in rows if r["outcome"] == "refused:role" and r["actor"] == "tina"]
    assert len(refused) >= 2
    # tokens are stored hashed only, and never logged
    text = (server.config_path.parent / "fleet.db").read_bytes()
    assert tech.encode() not in text and body["token"].encode() not in text
    assert tech not in server.log_text() and body["token"] not in server.log_text()
    assert json.dumps(rows).find(body["token"]) < 0


def test_listener_sends_a_session_ticket_after_the_handshake(server: IdentityServer) -> None:
    """The EST listener answers the client's Finished with one TLS 1.3 session ticket, so a
    client that leaves Nagle's algorithm on (no TCP_NODELAY) does not wait for a delayed
    ACK before its request goes out (``fleet_server.identity.est.est_config``)."""
    ctx = ssl.create_default_context(cafile=str(server.ca.root_cert_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with (
        socket.create_connection(("localhost", server.est_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(
            b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        session = tls.session
    assert answer.startswith(b"HTTP/1.1 200")
    assert session is not None and session.has_ticket
