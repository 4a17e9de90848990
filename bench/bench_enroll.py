"""Enrollments per second through the EST HTTPS endpoint (TLS handshake, token check, CSR
policy, sign, store, audit), beside the bare ``cryptography`` sign loop on the same
machine and the same CSRs.

The fleet server runs as its real process (SQLite) with its EST worker processes. Every
enrollment is a distinct device: its own P-256 key, CSR and one-time token, one new TCP
connection with a full TLS handshake (no session resumption: counted) and TCP_NODELAY as
``agent.identity.est_client`` (http.client) and curl set it (a client without it is served as fast
only because the server sends a session ticket: ``fleet_server.identity.est.est_config``). Keys,
CSRs and
tokens are made before the clock starts (devices make their keys; tokens come from the
operator beforehand). The clients (``bench.enroll_load``) run on the same 2 cores as the
server, so the figure is a floor (a C client on libssl cost the same CPU per enrollment
here: the TLS handshake, not Python, is the client's cost). After the clock stops, every
answer is checked (a certificate for that device's key, CN = device id, signed by the
issuing CA) and so is the database (one certificate row, one spent token and one audit
entry per device). The detail gives the CPU time each enrollment cost the server and the
clients, which the other load on the machine changes less than the rate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from agent.identity import est_client
from bench.enroll_load import Answer, Job, request_bytes, run_load
from bench.results import Figure
from fleet_server.access.audit import SYSTEM
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import issuing_cert, sign_csr
from fleet_server.identity.enrollment import Enrollment
from fleet_server.identity.model import AuditEntry, EnrollmentToken, IssuedCertificate
from fleet_server.identity.settings import IdentitySettings
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for

N = 2000
EST_WORKERS = 2  # server processes (one per core)
CLIENT_PROCESSES = 2
CLIENT_THREADS = 8  # per client process
PREFIX = "bench-enroll-"


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def _raw_sign_rate(ca: CertificateAuthority, csrs: list[tuple[str, bytes]]) -> float:
    parsed = [(d, x509.load_der_x509_csr(c)) for d, c in csrs]
    start = time.perf_counter()
    for device_id, csr in parsed:
        sign_csr(ca, csr, device_id, 30)
    return len(parsed) / (time.perf_counter() - start)


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify(answer: Answer, spki: bytes, issuing: x509.Certificate) -> str:
    """ "" when the answer is a certificate for this device's key from the issuing CA."""
    if answer.error or answer.status != 200:
        return answer.error or f"HTTP {answer.status}: {answer.body[:80]!r}"
    try:
        certs = est_client.parse_certs_only(answer.body)
    except est_client.EstError as exc:
        return str(exc)
    if len(certs) != 1:
        return f"{len(certs)} certificates"
    cert = certs[0]
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn or cn[0].value != answer.device_id:
        return "wrong CN"
    if _spki(cert.public_key()) != spki:
        return "not the device's key"
    try:
        cert.verify_directly_issued_by(issuing)
    except (ValueError, TypeError) as exc:
        return f"not signed by the issuing CA: {exc}"
    return ""


def _stored(db_url: str) -> tuple[int, int, int]:
    """(certificate rows, spent tokens, ok audit entries) of the bench's devices."""
    engine = make_engine(db_url)
    like = PREFIX + "%"
    with engine.connect() as conn:
        certs = conn.scalar(
            select(func.count())
            .select_from(IssuedCertificate)
            .where(IssuedCertificate.device_id.like(like))
        )
        spent = conn.scalar(
            select(func.count())
            .select_from(EnrollmentToken)
            .where(EnrollmentToken.device_id.like(like), EnrollmentToken.used_at.is_not(None))
        )
        audited = conn.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                AuditEntry.action == "est.enroll",
                AuditEntry.outcome == "ok",
                AuditEntry.target.like(like),
            )
        )
    engine.dispose()
    return int(certs or 0), int(spent or 0), int(audited or 0)


def run(work: Path) -> list[Figure]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    server = IdentityServer(work / "server", ca, broker, identity={"est_workers": EST_WORKERS})
    db_url = f"sqlite:///{server.config_path.parent / 'fleet.db'}"
    try:
        server.start_all()
        ready = server.est_workers_ready
        wait_for(lambda: ready() == EST_WORKERS, 120, what="EST workers")
        engine = make_engine(db_url)
        maker = Enrollment(make_sessionmaker(engine), ca, IdentitySettings())
        host, port = "localhost", server.est_port
        jobs: list[Job] = []
        keys: dict[str, bytes] = {}
        csrs: list[tuple[str, bytes]] = []
        for i in range(N):
            device_id = f"{PREFIX}{i:05d}"
            token, _exp = maker.create_token(device_id, "agent", SYSTEM, None, None)
            key = est_client.new_key()
            csr = est_client.make_csr(key, device_id)
            keys[device_id] = _spki(key.public_key())
            csrs.append((device_id, csr))
            jobs.append(Job(device_id, request_bytes(host, port, device_id, token, csr)))
        engine.dispose()
        raw_rate = _raw_sign_rate(ca, csrs)
        server_cpu = _tree_cpu_s(server.pid)
        load = run_load(host, port, str(ca.root_cert_path), jobs, CLIENT_PROCESSES, CLIENT_THREADS)
        server_cpu = _tree_cpu_s(server.pid) - server_cpu
    finally:
        server.stop()
        broker.stop()
    issuing = issuing_cert(ca)
    problems = [p for a in load.answers if (p := verify(a, keys[a.device_id], issuing))]
    reused = sum(a.reused for a in load.answers)
    done = len(load.answers) - len(problems)
    certs, spent, audited = _stored(db_url)
    if not certs == spent == audited == done:
        problems.append(f"stored {certs}/{spent}/{audited} for {done} answers")
        done = min(done, certs, spent, audited)
    rate = done / load.elapsed_s
    fleet_s = 10_000 / rate if rate else float("inf")
    first = f"; first problem: {problems[0]}" if problems else ""
    return [
        Figure(
            "enroll_per_s",
            round(rate, 1),
            "enrollments/s",
            "target 500/s (10,000 cameras re-enroll in 20 s)",
            f"{done} of {N} distinct devices enrolled over HTTPS in {load.elapsed_s:.2f} s, "
            f"each a new TLS connection with a full handshake (resumed {reused}); server "
            f"{EST_WORKERS} EST worker processes, SQLite; clients {CLIENT_PROCESSES} processes x "
            f"{CLIENT_THREADS} threads on the same cores; "
            f"stored {certs} certificates, "
            f"{spent} spent tokens, {audited} audit entries; CPU per enrollment: server "
            f"{server_cpu / N * 1000:.2f} ms, clients {load.client_cpu_s / N * 1000:.2f} ms; "
            f"10,000 would take {fleet_s:.0f} s; "
            f"errors {len(problems)}{first}",
        ),
        Figure(
            "enroll_over_raw_sign",
            round(rate / raw_rate, 4),
            "ratio",
            "bare cryptography sign loop (same CSRs, same issuing key)",
            f"raw sign {raw_rate:.0f}/s, through EST {rate:.0f}/s",
        ),
    ]
