"""Enrollments per second through the EST HTTPS endpoint (TLS handshake, token check, CSR
policy, sign, store, audit), beside the bare ``cryptography`` sign loop on the same
machine and the same CSRs.

The fleet server runs as its real process (SQLite); each enrollment is one new HTTPS
connection, as from a device, from ``CLIENTS`` client threads on the same 2 cores (the
clients' own TLS work competes with the server: the figure is a floor). Keys and CSRs are
made before the clock starts (the devices make them); tokens are created in the server's
database beforehand.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cryptography import x509

from agent import est_client
from bench.results import Figure
from fleet_server.audit import SYSTEM
from fleet_server.ca import CertificateAuthority
from fleet_server.ca_ops import sign_csr
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.enrollment import Enrollment
from fleet_server.identity_config import IdentitySettings
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker

N = 1000
CLIENTS = 8


def _raw_sign_rate(ca: CertificateAuthority, csrs: list[tuple[str, bytes]]) -> float:
    parsed = [(d, x509.load_der_x509_csr(c)) for d, c in csrs]
    start = time.perf_counter()
    for device_id, csr in parsed:
        sign_csr(ca, csr, device_id, 30)
    return len(parsed) / (time.perf_counter() - start)


def run(work: Path) -> list[Figure]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    server = IdentityServer(work / "server", ca, broker)
    try:
        server.start_all()
        engine = make_engine(f"sqlite:///{server.config_path.parent / 'fleet.db'}")
        maker = Enrollment(make_sessionmaker(engine), ca, IdentitySettings())
        jobs: list[tuple[str, bytes, str]] = []
        for i in range(N):
            device_id = f"bench-enroll-{i:05d}"
            token, _exp = maker.create_token(device_id, "agent", SYSTEM, None, None)
            jobs.append((device_id, est_client.make_csr(est_client.new_key(), device_id), token))
        engine.dispose()
        raw_rate = _raw_sign_rate(ca, [(d, c) for d, c, _t in jobs])

        errors: list[str] = []
        lock = threading.Lock()
        todo = iter(jobs)

        def worker() -> None:
            client = est_client.EstClient(server.est_url, ca.root_cert_path)
            while True:
                with lock:
                    job = next(todo, None)
                if job is None:
                    return
                device_id, csr, token = job
                try:
                    client.simpleenroll(csr, token, device_id)
                except est_client.EstError as exc:
                    with lock:
                        errors.append(str(exc))

        threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        elapsed = time.perf_counter() - start
        done = N - len(errors)
        rate = done / elapsed
    finally:
        server.stop()
        broker.stop()
    fleet_s = 10_000 / rate if rate else float("inf")
    return [
        Figure(
            "enroll_per_s",
            round(rate, 1),
            "enrollments/s",
            "target 500/s (10,000 cameras re-enroll in 20 s)",
            f"{done} of {N} enrolled over HTTPS ({CLIENTS} client threads, a new TLS connection "
            f"each, SQLite); 10,000 would take {fleet_s:.0f} s; errors {len(errors)}",
        ),
        Figure(
            "enroll_over_raw_sign",
            round(rate / raw_rate, 4),
            "ratio",
            "bare cryptography sign loop (same CSRs, same issuing key)",
            f"raw sign {raw_rate:.0f}/s, through EST {rate:.0f}/s",
        ),
    ]
