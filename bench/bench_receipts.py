"""Receipts (issue 14): what they cost, how fast an event is safe, and what faults lose.

- ``receipt_ingest_over_plain``: events persisted per second by two fleet server workers on
  PostgreSQL with receipts ÷ the same run with ``[receipts] send = false`` (≥ 0.9 wanted).
- ``ingest_over_raw_receipts``: the receipts run ÷ raw mosquitto_pub -> mosquitto_sub of the
  same events (``ingest_over_raw`` with receipts on; ≥ 0.5 wanted).
- ``event_stored_p99_ms``: an event made on the device (outbox commit, the agent's link
  stack) -> committed in the server's database and its receipt back on the device, p99 at a
  steady 20 events/s (it replaces PUBACK as the moment an event is safe).
- ``events_lost_fault_matrix``: events lost over the fault runs of hil_tests/receipts_faults
  (worker SIGTERM, broker kill -9 with devices back first, server SIGSTOP with a small
  broker queue), 30 s each; the detail gives the events sent.
Skipped (no figure) when no PostgreSQL server answers on 127.0.0.1:5432 (first two).
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg

from agent.config import MqttSettings
from agent.link.mqtt import Link
from agent.link.outbox import Outbox
from agent.link.sender import Sender
from bench.results import Figure
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.procs import RIG_RECONNECT, Broker, wait_for
from hil_tests.receipts_faults import Fault, Plan
from hil_tests.receipts_faults import run as fault_run
from hil_tests.server import ServerProcess

PER_DEVICE = 5_000
DEVICES = 4
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _lines(device: str, tag: str, n: int) -> bytes:
    out = []
    for i in range(n):
        body = {
            "seq": i,
            "event_id": f"{device}-{tag}-{i}",
            "type": "track.new",
            "epoch": tag,
            "data": {"track": i, "label": "Car", "score": 0.8, "box": [0.1, 0.2, 0.3, 0.4]},
        }
        out.append(contract.encode("event", device, body, 1.8e9 + i)[1])
    return b"\n".join(out) + b"\n"


def _publish(broker: Broker, ca: CertificateAuthority, devs: list[DeviceCredentials],
             tag: str) -> None:  # fmt: skip
    procs = [subprocess.Popen([
        "mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-q", "1", "-l",
        "-t", contract.topic(d.device_id, "event"), "--cafile", str(ca.root_cert_path),
        "--cert", str(d.directory / "cert.pem"), "--key", str(d.directory / "key.pem"),
        "-i", d.device_id], stdin=subprocess.PIPE) for d in devs]  # fmt: skip
    for d, p in zip(devs, procs, strict=True):
        assert p.stdin is not None
        p.stdin.write(_lines(d.device_id, tag, PER_DEVICE))
        p.stdin.close()
    for p in procs:
        p.wait(timeout=600)


def _rate(work: Path, ca: CertificateAuthority, broker: Broker, devs: list[DeviceCredentials],
          url: str, tag: str, send: bool) -> float:  # fmt: skip
    workers = [
        ServerProcess(work / f"{tag}-w{i}", ca.dir, broker.port, database_url=url,
                      client_id=f"bench-rx-{tag}-{i}",
                      extra={"receipts": {"send": send}}).start_and_wait(60)
        for i in (1, 2)
    ]  # fmt: skip
    try:
        total = PER_DEVICE * DEVICES

        def stored() -> float:
            return sum(w.metric("camfleet_ingest_stored_total", 'kind="event"') for w in workers)

        t0 = time.perf_counter()
        _publish(broker, ca, devs, tag)
        wait_for(lambda: stored() >= total, 600, interval=0.05, what="events stored")
        rate = total / (time.perf_counter() - t0)
        sent = sum(w.metric("camfleet_receipts_sent_total") for w in workers)
        if send and sent <= 0:
            raise RuntimeError("no receipts were sent")
        return rate
    finally:
        for w in workers:
            w.stop()


def _ingest(work: Path) -> list[Figure]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        print("   no PostgreSQL on 127.0.0.1:5432: receipt_ingest_over_plain not measured")
        return []
    names = [f"camfleet_bench_rx_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    ca = CertificateAuthority(work / "pki")
    ca.init()
    broker = Broker(ca, work / "broker").start()
    devs = [ca.issue_device(f"rx-bench-{i}", work / f"dev{i}") for i in range(DEVICES)]
    total = PER_DEVICE * DEVICES
    try:
        sub = subprocess.Popen(
            ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "-q", "1",
             "-t", f"{contract.TOPIC_ROOT}/+/event", "-C", str(total),
             "--cafile", str(ca.root_cert_path), "--cert", str(ca.server_cert_path),
             "--key", str(ca.server_key_path)], stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        t0 = time.perf_counter()
        _publish(broker, ca, devs, "raw")
        sub.wait(timeout=600)
        raw = total / (time.perf_counter() - t0)
        url = "postgresql+psycopg://postgres@127.0.0.1:5432/"
        plain = _rate(work, ca, broker, devs, url + names[0], "plain", False)
        with_rx = _rate(work, ca, broker, devs, url + names[1], "rx", True)
    finally:
        broker.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    detail = (
        f"{total} QoS 1 events from {DEVICES} devices, 2 workers into PostgreSQL: "
        f"with receipts {with_rx:.0f}/s, without {plain:.0f}/s, raw {raw:.0f}/s"
    )
    return [
        Figure("receipt_ingest_over_plain", with_rx / plain, "ratio",
               "the same run with [receipts] send = false", detail),
        Figure("ingest_over_raw_receipts", with_rx / raw, "ratio",
               "mosquitto_pub -> mosquitto_sub, same broker and publishers", detail),
    ]  # fmt: skip


def _latency(work: Path) -> Figure:
    ca = CertificateAuthority(work / "pki-lat")
    ca.init()
    broker = Broker(ca, work / "broker-lat").start()
    creds = ca.issue_device("rx-lat-1", work / "rx-lat-1")
    server = ServerProcess(work / "lat-server", ca.dir, broker.port,
                           client_id="bench-rx-lat")  # fmt: skip
    box = Outbox(work / "lat-outbox.sqlite", "rx-lat-1", 64 << 20, 100_000)
    link = Link(
        "rx-lat-1",
        MqttSettings(
            host="localhost",
            port=broker.port,
            ca=creds.root_pem,
            cert=creds.cert_pem,
            key=creds.key_pem,
            **RIG_RECONNECT,
        ),
    )
    made: dict[int, float] = {}
    took: list[float] = []
    lock = threading.Lock()

    def receipted(ids: list[int]) -> None:
        now = time.perf_counter()
        with lock:
            took.extend(now - made.pop(i) for i in ids if i in made)

    sender = Sender(box, link, 20, on_receipted=receipted)
    n = 600
    try:
        server.start_and_wait(60)
        link.start()
        sender.start()
        wait_for(link.is_connected, 20, what="bench link")
        t0 = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, t0 + i / 20.0 - time.perf_counter()))
            t = time.perf_counter()
            box.add("track.new", {"track": i}, time.time())
            with lock:
                made[box.last_row_id] = t
            sender.kick()
        wait_for(lambda: box.depth() == 0, 60, what="every event receipted")
    finally:
        sender.stop()
        link.close()
        box.close()
        server.stop()
        broker.stop()
    steady = sorted(took[n // 10 :])  # the first seconds warm up
    p99 = steady[int(0.99 * (len(steady) - 1))] * 1000
    return Figure("event_stored_p99_ms", p99, "ms", "frame period 50 ms (20 events/s)",
                  f"{len(took)} events, outbox commit -> database commit -> receipt on the "
                  f"device, median {statistics.median(steady) * 1000:.1f} ms, real TLS "
                  "Mosquitto, one server process on SQLite")  # fmt: skip


def _faults(work: Path) -> Figure:
    plans = {
        "worker SIGTERM x2": Plan(devices=3, rate=10, duration_s=30, faults=[
            Fault(8, "sigterm_server", hold_s=3), Fault(20, "sigterm_server", hold_s=3)]),
        "broker kill -9 x3, devices first": Plan(devices=3, rate=10, duration_s=30, faults=[
            Fault(t, "kill_broker", hold_s=3) for t in (6, 15, 24)]),
        "server SIGSTOP 15 s, queue 100": Plan(devices=3, rate=10, duration_s=30,
                                               max_queued=100,
                                               faults=[Fault(8, "stall_server", hold_s=15)]),
    }  # fmt: skip
    ca = CertificateAuthority(work / "pki-faults")
    ca.init()
    sent = lost = dup = 0
    parts = []
    for i, (name, plan) in enumerate(plans.items()):
        t = fault_run(work / f"fault-{i}", ca, plan).tally
        sent, lost, dup = sent + t.sent, lost + t.lost, dup + t.duplicated
        parts.append(f"{name}: {t.sent} sent, {t.lost} lost, server counted {t.server_lost}")
    return Figure("events_lost_fault_matrix", lost, "events", f"{sent} events sent",
                  "; ".join(parts) + f"; duplicated {dup}")  # fmt: skip


def run(work: Path) -> list[Figure]:
    work.mkdir(parents=True, exist_ok=True)
    return [*_ingest(work), _latency(work), _faults(work)]
