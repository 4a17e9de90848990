"""Persisted messages/s through the real broker ÷ raw mosquitto_pub -> mosquitto_sub.

The data-centre set-up: two fleet server workers (one per core) in the MQTT v5 shared
subscription, writing to PostgreSQL. Four publishers (device certificates) send N QoS 1
heartbeats each; the raw leg is the same publishers into one mosquitto_sub.
Skipped (no figure) when no PostgreSQL server answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import psycopg

from bench.bench_heartbeat import _lines, pub_argv
from bench.results import Figure
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess

PER_DEVICE = 10_000
DEVICES = 4
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _publish_all(broker: Broker, ca: CertificateAuthority, devs: list[DeviceCredentials],
                 start_seq: int) -> None:  # fmt: skip
    procs = [
        subprocess.Popen(pub_argv(broker, ca, d.device_id, d.directory), stdin=subprocess.PIPE)
        for d in devs
    ]
    for d, p in zip(devs, procs, strict=True):
        assert p.stdin is not None
        p.stdin.write(_lines(d.device_id, PER_DEVICE, start_seq))
        p.stdin.close()
    for p in procs:
        p.wait(timeout=600)


def run(work: Path) -> list[Figure]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        print("   no PostgreSQL on 127.0.0.1:5432: ingest_over_raw not measured")
        return []
    name = f"camfleet_bench_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    devs = [ca.issue_device(f"ingest-{i}", work / f"dev{i}") for i in range(DEVICES)]
    total = PER_DEVICE * DEVICES
    workers: list[ServerProcess] = []
    try:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "-q", "1",
             "-t", f"{contract.TOPIC_ROOT}/+/heartbeat", "-C", str(total),
             "--cafile", str(ca.root_cert_path), "--cert", str(ca.server_cert_path),
             "--key", str(ca.server_key_path)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        t0 = time.perf_counter()
        _publish_all(broker, ca, devs, 0)
        sub.wait(timeout=600)
        raw = total / (time.perf_counter() - t0)

        for i in (1, 2):
            workers.append(
                ServerProcess(work / f"w{i}", ca.dir, broker.port, database_url=url,
                              client_id=f"bench-worker-{i}",
                              # a throughput bench: 10,000 heartbeats a device at once is
                              # far over any device's budget (issue 15)
                              extra={"ingest": {"budget": {"enabled": False}}},
                              ).start_and_wait()
            )  # fmt: skip

        def stored() -> float:
            return sum(w.metric("camfleet_ingest_stored_total", 'kind="heartbeat"')
                       for w in workers)  # fmt: skip

        t0 = time.perf_counter()
        _publish_all(broker, ca, devs, PER_DEVICE)
        wait_for(lambda: stored() >= total, 600, interval=0.05, what="ingest")
        persisted = total / (time.perf_counter() - t0)
        split = [int(w.metric("camfleet_ingest_received_total", 'kind="heartbeat"'))
                 for w in workers]  # fmt: skip
    finally:
        for w in workers:
            w.stop()
        broker.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return [
        Figure("ingest_over_raw", persisted / raw, "ratio",
               "mosquitto_pub -> mosquitto_sub, same broker and publishers",
               f"{total} QoS 1 heartbeats from {DEVICES} devices: persisted {persisted:.0f}/s "
               f"by 2 workers into PostgreSQL (split {split[0]}/{split[1]}), raw {raw:.0f}/s"),
    ]  # fmt: skip
