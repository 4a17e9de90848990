"""The EST listener served by several worker processes of the real fleet server: one token
fired by many clients at once still enrolls once; outcomes reach the server's metrics; a
worker that dies is replaced; the workers end with the server. And the same app in a
thread of the server (``est_workers = 0``)."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from agent.identity import est_client
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.est import token_from
from fleet_server.identity.est_workers import WorkerParams, parse_count
from fleet_server.identity.model import AuditEntry, IssuedCertificate
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for

WORKERS = 3
RACERS = 12


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return kids


def _workers(server: IdentityServer) -> set[int]:
    return {
        pid
        for pid in _children(server.pid)
        if b"fleet_server.identity.est_workers" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def broker(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own: the servers killed here leave persistent MQTT sessions
    in their shared subscription, which would take messages meant for later tests."""
    b = Broker(ca, tmp_path_factory.mktemp("est-workers-broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(
        tmp_path_factory.mktemp("est-workers"), ca, broker, identity={"est_workers": WORKERS}
    )
    srv.start_all()
    try:
        wait_for(lambda: srv.est_workers_ready() == WORKERS, 60, what="all EST workers")
        yield srv
    finally:
        srv.stop()


def _count(server: IdentityServer, model: type, *where: object) -> int:
    engine = create_engine(f"sqlite:///{server.config_path.parent / 'fleet.db'}")
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).select_from(model).where(*where))  # type: ignore[arg-type]
    engine.dispose()
    return int(n or 0)


def test_one_token_fired_at_once_from_many_clients_enrolls_once(server: IdentityServer) -> None:
    assert len(_workers(server)) == WORKERS
    device = "race-dev-01"
    token = server.token(device)
    csrs = [est_client.make_csr(est_client.new_key(), device) for _ in range(RACERS)]
    start = threading.Barrier(RACERS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def fire(csr: bytes) -> None:
        client = est_client.EstClient(server.est_url, server.ca.root_cert_path, timeout=60)
        start.wait(30)
        try:
            client.simpleenroll(csr, token, device)
            got = "ok"
        except est_client.EstError as exc:
            got = f"{exc.status}:{exc.reason}"
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=fire, args=(c,)) for c in csrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["401:token_used"] * (RACERS - 1) + ["ok"]
    assert _count(server, IssuedCertificate, IssuedCertificate.device_id == device) == 1
    ok = AuditEntry.action == "est.enroll", AuditEntry.outcome == "ok"
    assert _count(server, AuditEntry, AuditEntry.target == device, *ok) == 1
    refused = AuditEntry.action == "est.enroll", AuditEntry.outcome == "refused:token_used"
    assert _count(server, AuditEntry, AuditEntry.target == device, *refused) == RACERS - 1
    # every worker reports its outcomes to the server's /metrics
    name = "camfleet_est_requests_total"
    wait_for(
        lambda: (
            server.metric(name, 'op="simpleenroll",outcome="token_used"') == RACERS - 1
            and server.metric(name, 'op="simpleenroll",outcome="ok"') == 1
        ),
        20,
        what="EST counts from the workers",
    )


def test_a_dead_worker_is_replaced_and_enrollment_goes_on(server: IdentityServer) -> None:
    before = _workers(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # a child of the server this test started
    wait_for(
        lambda: not _alive(victim) and server.est_workers_ready() == WORKERS + 1,
        60,
        what="a replacement EST worker",
    )
    assert len(_workers(server) - {victim}) == WORKERS
    assert "EST worker" in server.log_text() and "restarting it" in server.log_text()
    for i in range(WORKERS * 2):  # new connections land on old and new workers alike
        device = f"after-restart-{i:02d}"
        key = est_client.new_key()
        cert = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
            est_client.make_csr(key, device), server.token(device), device
        )
        assert cert.public_key() == key.public_key()


def test_workers_end_even_when_the_server_is_killed(
    broker: Broker, ca: CertificateAuthority, tmp_path: Path
) -> None:
    srv = IdentityServer(
        tmp_path / "srv", ca, broker, identity={"est_workers": 2}, client_id="fleet-server-w2"
    )
    srv.start_all()
    try:
        workers = _workers(srv)
        assert len(workers) == 2
    finally:
        srv.kill()  # SIGKILL: no shutdown code runs in the server, its pipes just close
    wait_for(lambda: not any(_alive(p) for p in workers), 30, what="EST workers to end")


def test_worker_channel_and_token_header_parsing() -> None:
    params = WorkerParams("sqlite:///x.db", "/pki", "INFO", {"est_workers": 2, "cert_days": 3})
    assert WorkerParams.from_line(params.to_line()) == params
    assert parse_count("count simpleenroll token_used 3") == ("simpleenroll", "token_used", 3)
    for bad in ("count simpleenroll ok", "count a b -1", "ready", "count a b c d"):
        assert parse_count(bad) is None
    assert token_from("Bearer cfe_abc") == ("cfe_abc", None)
    assert token_from("Basic ZGV2LTAxOmNmZV94eXo=") == ("cfe_xyz", "dev-01")
    assert token_from("Basic !!!") == ("", None)
    assert token_from("Digest x") == ("", None)


def test_in_process_listener_when_workers_is_0(
    broker: Broker, ca: CertificateAuthority, tmp_path: Path
) -> None:
    srv = IdentityServer(
        tmp_path / "srv", ca, broker, identity={"est_workers": 0}, client_id="fleet-server-w0"
    )
    srv.start_all()
    try:
        assert _workers(srv) == set()
        device = "inproc-dev-01"
        key = est_client.new_key()
        client = est_client.EstClient(srv.est_url, ca.root_cert_path)
        cert = client.simpleenroll(est_client.make_csr(key, device), srv.token(device), device)
        assert cert.public_key() == key.public_key()
        ctx = ssl.create_default_context(cafile=str(ca.root_cert_path))
        answers = {}
        for method, path, ctype in (
            ("GET", "/.well-known/est/nothing", ""),
            ("GET", "/.well-known/est/simpleenroll", ""),
            ("POST", "/.well-known/est/simpleenroll", "text/plain"),
        ):
            conn = http.client.HTTPSConnection("localhost", srv.est_port, context=ctx, timeout=30)
            conn.request(method, path, body=b"x" if method == "POST" else None,
                         headers={"Content-Type": ctype} if ctype else {})  # fmt: skip
            resp = conn.getresponse()
            answers[(method, path)] = (resp.status, resp.read().split(b":")[0])
            conn.close()
        assert answers == {
            ("GET", "/.well-known/est/nothing"): (404, b"not_found"),
            ("GET", "/.well-known/est/simpleenroll"): (405, b"method_not_allowed"),
            ("POST", "/.well-known/est/simpleenroll"): (415, b"bad_content_type"),
        }
        name = "camfleet_est_requests_total"
        assert srv.metric(name, 'op="simpleenroll",outcome="ok"') == 1
        assert srv.metric(name, 'op="simpleenroll",outcome="bad_content_type"') == 1
    finally:
        srv.stop()
