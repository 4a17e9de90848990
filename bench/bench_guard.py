"""honest_stored_under_attack (issue 15): the fraction of honest messages the fleet server
stores while one device with a valid certificate attacks at its full rate.

Eight honest devices send numbered heartbeats (5/s) and events (10/s) over TLS for 30 s;
one attacker sends, round after round, 17 malformed and adversarial payloads, events with
the honest devices' next event ids, and 500 heartbeats as fast as QoS 1 with a window of
a thousand lets it (hil_tests/attack.py). The server runs with its default budget. The
figure must be 1.0; the detail gives the attacker's rate, what the server refused by
reason, and the server's CPU over the run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from bench.results import Figure
from fleet_server.identity.ca import CertificateAuthority
from hil_tests import attack
from hil_tests.procs import Broker, RigError, wait_for
from hil_tests.server import ServerProcess

DURATION_S = 30.0
HONEST = 8


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(db: Path, sql: str, *args: object) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def run(work: Path) -> list[Figure]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    server: ServerProcess | None = None
    try:
        server = ServerProcess(work / "server", ca.dir, broker.port, grace=5.0).start_and_wait()

        def creds(device_id: str) -> attack.Creds:
            c = ca.issue_device(device_id, work / device_id)
            return attack.Creds(device_id, c.root_pem, c.cert_pem, c.key_pem)

        honest = [creds(f"bench-honest-{i}") for i in range(HONEST)]
        evil = creds("bench-evil")
        cpu0, t0 = _cpu_s(server.pid), time.monotonic()
        report = attack.run(broker.port, honest, evil, DURATION_S)
        # at once: the devices stopped with the run, their deadline (1 s + 5 s) is near
        offline = [
            a["device_id"]
            for a in server.get("/api/alerts?limit=1000")[1]["items"]
            if a["rule"] == "offline" and a["device_id"].startswith("bench-honest-")
        ]
        db = server.config_path.parent / "fleet.db"
        sent = sum(report.honest_heartbeats.values()) + sum(report.honest_events.values())

        def stored() -> int:
            hb = (
                "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM heartbeats "
                "WHERE device_id LIKE 'bench-honest-%')"
            )
            ev = "SELECT count(*) FROM events WHERE device_id LIKE 'bench-honest-%'"
            return _count(db, hb) + _count(db, ev)

        with contextlib.suppress(RigError):  # the figure says how many were not
            wait_for(lambda: stored() >= sent, 60, what="honest messages stored")
        cpu = (_cpu_s(server.pid) - cpu0) / (time.monotonic() - t0)
        got = stored()
        _status, seen = server.get("/api/quarantine")
        refused = seen["refused"].get(evil.device_id, {})
    finally:
        if server is not None:
            server.stop()
        broker.stop()
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(refused.items()))
    return [
        Figure(
            "honest_stored_under_attack",
            got / sent,
            "fraction",
            "honest messages sent (must be 1.0)",
            f"{HONEST} honest devices, {sent} messages in {report.duration_s:.0f} s; attacker "
            f"{report.attack_rate:.0f} msg/s ({report.attack_sent} sent; refused: {reasons}); "
            f"honest devices marked offline: {len(offline)}; server CPU {cpu:.0%} of a core",
        )
    ]
