"""Heartbeat ingest through the fleet server vs. the raw broker path.

Both legs use the same TLS Mosquitto and the same publisher (``mosquitto_pub -l``, QoS 1,
one device certificate). Raw: ``mosquitto_sub`` with the server identity receives N
messages. Ingest: the fleet server validates, batches and stores N heartbeats in SQLite
(and only then acknowledges them). The figure is the ratio of the two rates.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from bench.results import Figure
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess

N = 20_000


def _lines(device: str, n: int, start_seq: int) -> bytes:
    out = []
    for i in range(n):
        body = {
            "seq": start_seq + i,
            "kind": "agent",
            "interval_s": 30,
            "uptime_s": float(i),
            "cpu_pct": 10.0,
            "mem_used_pct": 40.0,
            "versions": {"agent": "bench"},
        }
        _t, payload, _q, _r = contract.encode("heartbeat", device, body, 1.8e9 + i)
        out.append(payload)
    return b"\n".join(out) + b"\n"


def pub_argv(broker: Broker, ca: CertificateAuthority, device: str, creds_dir: Path) -> list[str]:
    """mosquitto_pub reading one heartbeat per line from stdin, QoS 1, as ``device``."""
    return [
        "mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-q", "1", "-l",
        "-t", contract.topic(device, "heartbeat"), "--cafile", str(ca.root_cert_path),
        "--cert", str(creds_dir / "cert.pem"), "--key", str(creds_dir / "key.pem"), "-i", device,
    ]  # fmt: skip


def _pub(
    broker: Broker, creds_dir: Path, ca: CertificateAuthority, device: str, data: bytes
) -> None:
    subprocess.run(pub_argv(broker, ca, device, creds_dir), input=data, check=True, timeout=600)


def run(work: Path) -> list[Figure]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    device = "bench-0001"
    creds = ca.issue_device(device, work / device)
    try:
        # raw: publisher -> broker -> mosquitto_sub
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "localhost",
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-t",
                contract.topic(device, "heartbeat"),
                "-C",
                str(N),
                "--cafile",
                str(ca.root_cert_path),
                "--cert",
                str(ca.server_cert_path),
                "--key",
                str(ca.server_key_path),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        data = _lines(device, N, 0)
        t0 = time.perf_counter()
        _pub(broker, creds.directory, ca, device, data)
        sub.wait(timeout=600)
        raw_rate = N / (time.perf_counter() - t0)

        # ingest: publisher -> broker -> fleet server -> SQLite
        server = ServerProcess(work / "server", ca.dir, broker.port).start_and_wait()
        try:
            data = _lines(device, N, N)
            t0 = time.perf_counter()
            _pub(broker, creds.directory, ca, device, data)
            wait_for(
                lambda: server.metric("camfleet_ingest_stored_total", 'kind="heartbeat"') >= N,
                600,
                interval=0.02,
                what="ingest",
            )
            ingest_rate = N / (time.perf_counter() - t0)
            stored = json.dumps(server.device(device)["last_seq"])  # type: ignore[index]
        finally:
            server.stop()
    finally:
        broker.stop()
    return [
        Figure(
            "heartbeat_ingest_over_raw",
            ingest_rate / raw_rate,
            "ratio",
            "mosquitto_pub -> mosquitto_sub on the same TLS broker",
            f"{N} QoS 1 heartbeats: ingest {ingest_rate:.0f}/s into SQLite, raw {raw_rate:.0f}/s;"
            f" last seq stored {stored}",
        )
    ]
