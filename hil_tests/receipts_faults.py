"""Fault runs for receipts (issue 14): a TLS Mosquitto, the fleet server (one process, or
ingest workers apart), and a process of devices (``receipts_load``), with faults at set
times; then the count, event by event (``receipts_load.tally``).

Faults (``Fault.what``):

- ``sigterm_server``: the server (or ingest worker ``target``) stopped cleanly and started
  again; it keeps its broker session, so the broker queues for it meanwhile.
- ``kill_server``: the same with SIGKILL.
- ``kill_broker``: the broker killed (``kill -9``) and started again while the server is
  held with SIGSTOP, so that the devices are back, and publish into a group without a
  member, before the server subscribes again.
- ``stall_server``: the server held with SIGSTOP for ``hold_s`` while the broker's
  ``max_queued_messages`` is small: its queue overflows and the broker drops.
- ``fill_disk``: the devices' outbox disk (a tmpfs of ``Plan.outbox_disk_mb``, so root)
  filled for ``hold_s`` and freed, the server held meanwhile (no receipts: the outboxes
  must grow, and cannot): events are refused at the source and counted.
- ``kill_devices``: the devices' process killed (a power cut of every box: what was
  committed to the outboxes stays) and started again after ``hold_s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.procs import Broker, Process, wait_for
from hil_tests.receipts_load import Tally, outbox_rows, tally
from hil_tests.server import ServerProcess, write_server_config


@dataclass(frozen=True)
class Fault:
    at_s: float
    what: str
    hold_s: float = 3.0
    target: int = 0  # which server process (0: the first)


@dataclass
class Plan:
    devices: int = 4
    rate: float = 10.0  # events per second per device
    duration_s: float = 10.0
    faults: list[Fault] = field(default_factory=list)
    max_queued: int | None = None  # the broker's max_queued_messages (None: as configured)
    database_url: str | None = None  # None: SQLite in the work folder
    workers: int = 0  # 0: one server process doing it all; N: an API process + N workers
    receipt_timeout_s: float = 2.0
    lost_after_s: float = 600.0
    outbox_disk_mb: int = 0  # >0: the outboxes on a tmpfs this big (fill_disk needs it)


@dataclass
class Outcome:
    tally: Tally
    left_in_outboxes: int
    log: list[str]


def _broker(
    ca: CertificateAuthority, work: Path, port: int | None, max_queued: int | None
) -> Broker:
    b = Broker(ca, work / "broker", port)
    if max_queued is not None:
        conf = b.layout.conf.read_text()
        conf = "\n".join(
            f"max_queued_messages {max_queued}" if ln.startswith("max_queued_messages") else ln
            for ln in conf.splitlines()
        )
        b.layout.conf.write_text(conf + "\n")
    return b.start()


class _Fleet:
    """The server side: one process, or an API process and ingest workers."""

    def __init__(self, work: Path, ca: CertificateAuthority, port: int, plan: Plan) -> None:
        self.url = plan.database_url or f"sqlite:///{work / 'fleet.db'}"
        extra: dict[str, object] = {
            "mqtt": {"keep_session_on_stop": True},
            "receipts": {"lost_after_s": plan.lost_after_s, "check_interval_s": 0.5},
        }
        self.api = ServerProcess(work / "server", ca.dir, port, database_url=self.url,
                                 client_id="fleet-rx", extra=extra)  # fmt: skip
        self.workers: list[Process] = []
        if plan.workers:
            cfg = write_server_config(
                work / "workers.toml", data_dir=work / "server", pki_dir=ca.dir,
                broker_port=port, api_port=self.api.api_port, database_url=self.url,
                client_id="fleet-rx", extra=extra,
            )  # fmt: skip
            self.api.argv += ["--role", "api"]
            for i in range(1, plan.workers + 1):
                argv = [sys.executable, "-m", "fleet_server.cli", "--config", str(cfg), "run",
                        "--role", "ingest", "--instance", str(i)]  # fmt: skip
                self.workers.append(Process(f"worker-{i}", argv, work / f"worker-{i}.log"))

    @property
    def ingest(self) -> list[Process]:
        return self.workers or [self.api]

    def start(self) -> None:
        self.api.start_and_wait(60)
        for w in self.workers:
            w.start()
        time.sleep(1.5)  # the workers subscribe

    def restart(self, p: Process) -> None:
        if p is self.api:
            self.api.start_and_wait(60)
        else:
            p.start()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.api.stop()


def _inject(
    f: Fault, target: Process, fleet: _Fleet, broker: Broker, ca: CertificateAuthority,
    work: Path, plan: Plan,
) -> Broker:  # fmt: skip
    """Do fault ``f``; the broker running afterwards."""
    if f.what in ("sigterm_server", "kill_server"):
        target.stop() if f.what == "sigterm_server" else target.kill()
        time.sleep(f.hold_s)
        fleet.restart(target)
    elif f.what == "kill_broker":
        for p in fleet.ingest:
            os.kill(p.pid, signal.SIGSTOP)
        broker.kill()
        broker = _broker(ca, work, broker.port, plan.max_queued)
        time.sleep(f.hold_s)  # the devices come back and publish first
        for p in fleet.ingest:
            os.kill(p.pid, signal.SIGCONT)
    elif f.what == "fill_disk":
        for p in fleet.ingest:
            os.kill(p.pid, signal.SIGSTOP)
        filler = work / "outboxes" / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(1 << 18):  # bounded: 1 GiB at most
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: the disk is full
        finally:
            os.close(fd)
        time.sleep(f.hold_s)
        os.unlink(filler)
        for p in fleet.ingest:
            os.kill(p.pid, signal.SIGCONT)
    elif f.what == "kill_devices":
        target.kill()
        time.sleep(f.hold_s)
        target.start()
    elif f.what == "stall_server":
        os.kill(target.pid, signal.SIGSTOP)
        time.sleep(f.hold_s)
        os.kill(target.pid, signal.SIGCONT)
    else:
        raise ValueError(f"unknown fault {f.what!r}")
    return broker


def run(work: Path, ca: CertificateAuthority, plan: Plan) -> Outcome:
    """Run the plan and count; raises when a process fails to start."""
    work.mkdir(parents=True, exist_ok=True)
    creds = work / "devices"
    for i in range(plan.devices):
        d = f"rx-{i:03d}"
        if not (creds / d / "cert.pem").exists():
            ca.issue_device(d, creds / d)
    if plan.outbox_disk_mb:
        (work / "outboxes").mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={plan.outbox_disk_mb}m", "tmpfs",
                        str(work / "outboxes")], check=True, timeout=30)  # fmt: skip
    broker = _broker(ca, work, None, plan.max_queued)
    fleet = _Fleet(work, ca, broker.port, plan)
    stats = work / "stats.json"
    load = Process("load", [
        sys.executable, "-m", "hil_tests.receipts_load", "--creds", str(creds), "--port",
        str(broker.port), "--state", str(work / "outboxes"), "--stats", str(stats),
        "--rate", str(plan.rate), "--duration", str(plan.duration_s), "--drain", "90",
        "--receipt-timeout", str(plan.receipt_timeout_s),
    ], work / "load.log")  # fmt: skip
    log: list[str] = []
    t0 = time.monotonic()

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - t0:7.2f}s {what}")

    try:
        fleet.start()
        load.start()
        t0 = time.monotonic()  # faults count from the devices' start
        note("devices started")
        for f in sorted(plan.faults, key=lambda f: f.at_s):
            time.sleep(max(0.0, t0 + f.at_s - time.monotonic()))
            target = load if f.what == "kill_devices" else fleet.ingest[f.target]
            note(f"{f.what} {target.name}")
            broker = _inject(f, target, fleet, broker, ca, work, plan)
            note(f"{f.what} over")
        wait_for(lambda: not load.alive(), plan.duration_s + 120, interval=0.25,
                 what="devices done")  # fmt: skip
        note("devices done")
        time.sleep(1.0)  # the last heartbeats are stored
        return Outcome(tally(stats, fleet.url), outbox_rows(work / "outboxes"), log)
    finally:
        load.stop()
        fleet.stop()
        broker.stop()
        if plan.outbox_disk_mb:
            subprocess.run(["umount", "-l", str(work / "outboxes")], check=False, timeout=30)
