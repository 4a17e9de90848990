"""Two fleet server workers, one broker, one PostgreSQL: the shared subscription splits the
load, and every message is stored exactly once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import Broker, wait_for
from hil_tests.server import ServerProcess

MakeDevice = Callable[[str], DeviceCredentials]
DEVICES = 4
PER_DEVICE = 250


def _publish_burst(broker: Broker, creds: DeviceCredentials, ca: CertificateAuthority) -> None:
    lines = []
    for seq in range(PER_DEVICE):
        body = {"seq": seq, "kind": "agent", "interval_s": 30, "uptime_s": float(seq)}
        _t, payload, _q, _r = contract.encode("heartbeat", creds.device_id, body, 1.8e9 + seq)
        lines.append(payload)
    subprocess.run(
        ["mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-q", "1", "-l",
         "-t", contract.topic(creds.device_id, "heartbeat"), "--cafile", str(ca.root_cert_path),
         "--cert", str(creds.cert_pem), "--key", str(creds.key_pem), "-i", creds.device_id],
        input=b"\n".join(lines) + b"\n", check=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_split_the_load_and_store_each_message_once(
    database_url: str, broker: Broker, ca: CertificateAuthority, device_factory: MakeDevice,
    tmp_path: Path,
) -> None:  # fmt: skip
    workers = [
        ServerProcess(tmp_path / f"w{i}", ca.dir, broker.port, database_url=database_url,
                      client_id=f"fleet-worker-{i}")
        for i in (1, 2)
    ]  # fmt: skip
    try:
        for w in workers:  # one after the other: the first one runs the migrations
            w.start_and_wait()
        devices = [device_factory(f"split-{i:02d}") for i in range(DEVICES)]
        for creds in devices:
            _publish_burst(broker, creds, ca)
        total = DEVICES * PER_DEVICE
        stored = lambda: sum(  # noqa: E731
            w.metric("camfleet_ingest_stored_total", 'kind="heartbeat"') for w in workers
        )
        wait_for(lambda: stored() >= total, 60, what=f"{total} heartbeats stored")
        received = [w.metric("camfleet_ingest_received_total", 'kind="heartbeat"') for w in workers]
    finally:
        for w in workers:
            w.stop()
    # both workers took part, and together they saw each message once
    assert all(r > 0 for r in received), received
    assert sum(received) == total
    sync_url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(sync_url) as db:
        rows = db.execute(
            "SELECT device_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
            "FROM heartbeats GROUP BY device_id ORDER BY device_id"
        ).fetchall()
        # (retained statuses of other tests' devices on the shared broker arrive too)
        devs = db.execute(
            "SELECT id, last_seq, seq_gaps FROM devices WHERE id LIKE 'split-%' ORDER BY id"
        ).fetchall()
    assert rows == [(c.device_id, PER_DEVICE, PER_DEVICE, 0, PER_DEVICE - 1) for c in devices]
    # out-of-order storage across workers still ends with the right latest view, no gaps
    assert devs == [(c.device_id, PER_DEVICE - 1, 0) for c in devices]
