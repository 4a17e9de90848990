"""The dashboard with 10,000 devices and 1,000 open alerts, on the real server process.

The fleet is written through the real registry (``Registry.apply``: heartbeats, the health
rules opening the alerts), with 40 sites around Bắc Ninh, every device commissioned at one
and a day of counts at each (hil_tests/province.py). A signed-in session then asks:

- ``dashboard_overview_ms``: the overview page, p95 over 30 requests (client on the same
  machine: server time plus a loopback round trip), and its size; compared with a bare
  static file of the same server (``/ui/static/app.css``): the ratio says what rendering
  costs over serving bytes;
- the device list, the sites map, the Traffic page and a device page, p95 each;
- ``live_update_cost``: server CPU (its process, user + system) per open dashboard per
  minute: an open overview fetches itself every ``refresh_s`` (15 s, 4 times a minute),
  measured over 30 such fetches.
"""

from __future__ import annotations

import http.cookiejar
import json
import statistics
import time
import urllib.request
from pathlib import Path

import psutil

from bench.results import Figure
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority
from hil_tests import province
from hil_tests.procs import Broker
from hil_tests.server import ServerProcess

DEVICES = 10_000
ALERTS = 1_000
REQUESTS = 30
REFRESH_S = 15.0


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


def _seed(url: str) -> None:
    sessions = make_sessionmaker(make_engine(url))
    reg = province.registry(sessions)
    devices = [f"bench-{i:05d}" for i in range(DEVICES)]
    now = time.time()
    for k in range(0, DEVICES, 1000):
        reg.apply([province.heartbeat(d, now, 3600.0) for d in devices[k : k + 1000]])
    hot = devices[:ALERTS]
    for step in range(2):  # two bad heartbeats open an alert
        reg.apply([province.heartbeat(d, now + 1 + step, 3600.0, temp_c=92.0) for d in hot])
    placed = province.seed_sites(sessions, devices, now)
    first: dict[str, str] = {}
    for device, site in placed.items():
        first.setdefault(site, device)
    province.seed_counts(sessions, sorted(first.values()), hours=24, now=now)


def _opener(base: str, token: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    req = urllib.request.Request(base + "/ui/login", json.dumps({"token": token}).encode(),
                                 {"Content-Type": "application/json"}, method="POST")  # fmt: skip
    opener.open(req, timeout=30).read()
    return opener


def _timed(opener: urllib.request.OpenerDirector, url: str, n: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        with opener.open(url, timeout=60) as resp:
            body = resp.read()
            assert resp.status == 200, url
        times.append((time.perf_counter() - t0) * 1000)
        size = len(body)
    return times, size


def run(work: Path) -> list[Figure]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    server = ServerProcess(work / "server", ca.dir, broker.port,
                           extra={"dashboard": {"refresh_s": REFRESH_S}})  # fmt: skip
    token = server.add_user("bench-viewer", "viewer")
    try:
        server.start_and_wait(60)
        started = time.perf_counter()
        _seed(f"sqlite:///{work / 'server' / 'fleet.db'}")
        seed_s = time.perf_counter() - started
        base = server.base_url
        web = _opener(base, token)
        _timed(web, base + "/ui/", 2)  # warm
        proc = psutil.Process(server.pid)
        cpu0 = proc.cpu_times()
        overview, size = _timed(web, base + "/ui/", REQUESTS)
        cpu1 = proc.cpu_times()
        cpu_per_fetch = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / REQUESTS
        static, _ = _timed(web, base + "/ui/static/app.css", REQUESTS)
        others = {
            path: _p95(_timed(web, base + path, 8)[0])
            for path in ("/ui/devices", "/ui/sites", "/ui/counts", "/ui/devices/bench-00001")
        }
    finally:
        server.stop()
        broker.stop()
    p95, bare = _p95(overview), _p95(static)
    detail_pages = ", ".join(f"{p} {ms:.0f} ms" for p, ms in others.items())
    return [
        Figure("dashboard_overview_ms", round(p95, 1), "ms", f"static file {bare:.1f} ms",
               f"p95 of {REQUESTS}, {DEVICES:,} devices, {ALERTS:,} open alerts, page "
               f"{size / 1024:.0f} KiB; {p95 / bare:.0f}x a bare static file; p95 of "
               f"8: {detail_pages}; seeding took {seed_s:.0f} s"),
        Figure("live_update_cost", round(cpu_per_fetch * 60 / REFRESH_S, 3),
               "CPU s per dashboard per minute", "one core: 60 CPU s per minute",
               f"an open overview fetches itself every {REFRESH_S:.0f} s; "
               f"{cpu_per_fetch * 1000:.0f} ms CPU per fetch at {DEVICES:,} devices"),
    ]  # fmt: skip
