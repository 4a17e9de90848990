"""10,000 simulated devices on one Mosquitto and one fleet server, on this machine.

Each device has its own certificate (mutual TLS) and sends a heartbeat every 10 s. Figures:
devices the API shows online, p99 heartbeat-to-database lag (from the server's histogram),
server memory, then a broker restart: time until every device is back and the peak
connects per second (the jittered backoff should spread them, not stampede).

CAMFLEET_SIM_DEVICES sets the fleet size (default 10,000). Everything talks to 127.0.0.1
and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.results import Figure
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.procs import Broker, Process, wait_for
from hil_tests.server import ServerProcess

INTERVAL_S = 10.0


def read_stats(path: Path) -> dict[str, Any]:
    """The simulator's stats file (empty until it writes one)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _connected(path: Path) -> int:
    value = read_stats(path).get("connected", 0)
    return int(value) if isinstance(value, int) else 0


def _buckets(server: ServerProcess, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram from /metrics."""
    _status, text = server.get("/metrics")
    out: list[tuple[float, float]] = []
    for line in str(text).splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    return out


def p99_between(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """Upper bound of the bucket holding the 99th percentile of what was observed between
    two scrapes (the steady state, without the connect surge before it)."""
    delta = [(b, a - (before[i][1] if i < len(before) else 0.0)) for i, (b, a) in enumerate(after)]
    total = delta[-1][1] if delta else 0.0
    for bound, count in delta:
        if total and count >= 0.99 * total:
            return bound
    return float("nan")


def sim_credentials(work: Path) -> tuple[CertificateAuthority, Path, int, float]:
    """A CA and certificates for CAMFLEET_SIM_DEVICES (10,000) simulated devices under
    ``work``: (ca, folder of device folders, count, seconds issuing took). Raises the open
    file limit first, which the broker started after this inherits."""
    n = int(os.environ.get("CAMFLEET_SIM_DEVICES", "10000"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ca = CertificateAuthority(work / "pki")
    ca.init()
    creds = work / "devices"
    t0 = time.perf_counter()
    for i in range(n):
        ca.issue_device(f"sim-{i:05d}", creds / f"sim-{i:05d}", days=2)
    return ca, creds, n, time.perf_counter() - t0


def run(work: Path) -> list[Figure]:
    ca, creds, n, issue_s = sim_credentials(work)
    broker = Broker(ca, work / "broker").start()
    server = ServerProcess(work / "server", ca.dir, broker.port, grace=3.0).start_and_wait()
    stats = work / "sim.json"
    duration = 600.0
    sim = Process(
        "fleet-sim",
        [sys.executable, "-m", "hil_tests.fleet_sim", "--creds", str(creds), "--root",
         str(ca.root_cert_path), "--port", str(broker.port), "--interval", str(INTERVAL_S),
         "--rate", "500", "--first-spread", "20", "--duration", str(duration),
         "--stats", str(stats)],
        work / "sim.log",
    ).start()  # fmt: skip
    figures: list[Figure] = []
    try:
        t0 = time.monotonic()
        wait_for(lambda: server.get("/api/devices?state=online&limit=1")[1]["total"] >= n,
                 180, interval=1.0, what=f"{n} devices online")  # fmt: skip
        online_s = time.monotonic() - t0
        time.sleep(INTERVAL_S)  # let the connect surge drain
        before = _buckets(server, "camfleet_ingest_lag_seconds")
        time.sleep(3 * INTERVAL_S)  # steady state: every device sends three heartbeats
        after = _buckets(server, "camfleet_ingest_lag_seconds")
        lag_p99 = p99_between(before, after)
        steady = after[-1][1] - before[-1][1] if after and before else 0.0
        online = server.get("/api/devices?state=online&limit=1")[1]["total"]
        rss_mb = psutil.Process(server.pid).memory_info().rss / 2**20
        broker_mb = psutil.Process(broker.pid).memory_info().rss / 2**20

        broker.stop()
        wait_for(lambda: _connected(stats) == 0, 60, interval=0.2,
                 what="the simulator noticing the broker is gone")  # fmt: skip
        restarted = time.time()
        broker = Broker(ca, work / "broker", broker.port).start()
        t0 = time.monotonic()
        wait_for(lambda: _connected(stats) >= n, 240, interval=0.5,
                 what="every simulated device reconnected")  # fmt: skip
        back_s = time.monotonic() - t0
        per_s = read_stats(stats).get("connects_per_s")
        seconds = per_s if isinstance(per_s, dict) else {}
        since_restart = [int(v) for k, v in seconds.items() if int(k) >= int(restarted)]
        peak = max(since_restart) if since_restart else 0
    finally:
        sim.stop()
        server.stop()
        broker.stop()
    figures += [
        Figure("sim_devices_online", online, "devices", f"{n} simulated, own certificates",
               f"all online {online_s:.0f} s after start (500 connects/s); certs {issue_s:.0f} s"),
        Figure("heartbeat_lag_p99_s", lag_p99, "s", "target < 1 s",
               f"device timestamp to DB commit, steady state ({steady:.0f} heartbeats in "
               f"{3 * INTERVAL_S:.0f} s after the connect surge); histogram bucket upper bound"),
        Figure("server_rss_mb", rss_mb, "MiB", f"broker {broker_mb:.0f} MiB",
               f"fleet server process with {n} devices"),
        Figure("reconnect_all_s", back_s, "s", "first retry spread over 20 s",
               f"after a broker restart, until all {n} were connected again"),
        Figure("reconnect_peak_per_s", peak, "connects/s", "broker ceiling ~700/s",
               "highest connects in one second after the restart"),
    ]  # fmt: skip
    return figures
