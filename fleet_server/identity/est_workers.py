"""EST worker processes: one listening socket, several processes serving it.

A fleet re-enrolling at once is bound by CPU (TLS handshakes, CSR checks, signing), and one
Python process uses one core. The server process binds the EST port once and starts
``[identity] est_workers`` children (``python -m fleet_server.identity.est_workers``) that inherit
the socket and each run the EST app under uvicorn; the kernel hands every new connection
to one of them. Single use of a token does not depend on which process serves it: the
token is spent by a conditional update in the database (``fleet_server.identity.enrollment``).

Parent and child talk over the child's stdin and stdout: the parent writes the settings
the child needs as one JSON line and keeps stdin open (the child stops when it closes, so
a dead server leaves no workers behind); the child answers ``ready`` once it listens and
then ``count <op> <outcome> <n>`` lines, which the parent adds to its Prometheus counter
``camfleet_est_requests_total``. A worker that dies is restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter

from fleet_server.identity.ca import CertificateAuthority
from fleet_server.identity.ca_ops import ensure_est_cert
from fleet_server.identity.settings import IdentitySettings

log = logging.getLogger(__name__)

READY = "ready"
FLUSH_S = 0.5
RESTART_PAUSE_S = 1.0


def requests_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "camfleet_est_requests_total",
        "EST requests by operation and outcome (ok or the refusal reason)",
        ["op", "outcome"],
        registry=registry,
    )


@dataclass(frozen=True)
class WorkerParams:
    """What a worker needs (sent over its stdin: the database URL may hold a password)."""

    db_url: str
    pki_dir: str
    log_level: str
    identity: dict[str, Any]

    def to_line(self) -> bytes:
        return (json.dumps(self.__dict__) + "\n").encode()

    @staticmethod
    def from_line(line: bytes) -> WorkerParams:
        raw = json.loads(line)
        return WorkerParams(
            str(raw["db_url"]), str(raw["pki_dir"]), str(raw["log_level"]), dict(raw["identity"])
        )


def parse_count(line: str) -> tuple[str, str, int] | None:
    """``count <op> <outcome> <n>`` → (op, outcome, n); None for anything else."""
    parts = line.split()
    if len(parts) != 4 or parts[0] != "count" or not parts[3].isdigit():
        return None
    return parts[1], parts[2], int(parts[3])


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.reader: threading.Thread | None = None


class EstWorkers:
    """The listening socket and its worker processes, run by the server process."""

    def __init__(
        self,
        params: WorkerParams,
        ca: CertificateAuthority,
        host: str,
        port: int,
        hosts: list[str],
        count: int,
        counter: Counter,
    ) -> None:
        ensure_est_cert(ca, hosts)  # made here once, not raced by the workers
        self.params = params
        self.counter = counter
        self.sock = socket.create_server((host, port), backlog=1024)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = threading.Event()
        self.spawning = threading.Lock()  # no new worker once stop() has begun
        self.restarts = 0

    def start(self) -> None:
        """Start the workers without waiting for them: the socket already listens, so a
        connection made meanwhile waits in its backlog for the first worker that is up."""
        for worker in self.workers:
            self._spawn(worker)
        log.info(
            "EST listener on https://%s:%d/.well-known/est, %d worker processes starting",
            self.host,
            self.port,
            len(self.workers),
        )

    def _spawn(self, worker: _Worker) -> None:
        with self.spawning:
            if not self.stopping.is_set():
                self._spawn_locked(worker)

    def _spawn_locked(self, worker: _Worker) -> None:
        fd = self.sock.fileno()
        worker.ready.clear()
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_server.identity.est_workers", str(fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(fd,),
        )
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(self.params.to_line())
        worker.proc.stdin.flush()
        worker.reader = threading.Thread(
            target=self._read, args=(worker, worker.proc), name=f"est-worker-{worker.index}",
            daemon=True,
        )  # fmt: skip
        worker.reader.start()

    def _read(self, worker: _Worker, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line == READY:
                worker.ready.set()
                log.info("EST worker %d (pid %d) ready", worker.index, proc.pid)
                continue
            got = parse_count(line)
            if got is not None:
                self.counter.labels(op=got[0], outcome=got[1]).inc(got[2])
        code = proc.wait()
        if self.stopping.is_set():
            return
        log.error("EST worker %d exited with %s; restarting it", worker.index, code)
        self.restarts += 1
        if not self.stopping.wait(RESTART_PAUSE_S):
            self._spawn(worker)

    def stop(self, timeout: float = 10.0) -> None:
        with self.spawning:
            self.stopping.set()
        for worker in self.workers:  # closing stdin asks the worker to finish
            if worker.proc is not None and worker.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("EST worker %d did not stop; killing it", worker.index)
                worker.proc.kill()
                worker.proc.wait(timeout)
            if worker.reader is not None:
                worker.reader.join(timeout)
        self.sock.close()


# ------------------------------------------------------------------------- the worker


class _Counts:
    """Request outcomes counted in the worker, sent to the parent every ``FLUSH_S``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.tally: Tally[tuple[str, str]] = Tally()
        self.lock = threading.Lock()

    def count(self, op: str, outcome: str) -> None:
        with self.lock:
            self.tally[(op, outcome)] += 1

    def flush(self) -> None:
        with self.lock:
            items, self.tally = self.tally, Tally()
        lines = "".join(f"count {op} {outcome} {n}\n" for (op, outcome), n in items.items())
        if lines:
            self.out.write(lines.encode())
            self.out.flush()

    def say(self, line: str) -> None:
        self.out.write(f"{line}\n".encode())
        self.out.flush()


def worker_main(fd: int) -> int:
    import uvicorn

    from common.logs import setup_logging
    from fleet_server.db import make_engine, make_sessionmaker
    from fleet_server.identity.enrollment import Enrollment
    from fleet_server.identity.est import TLSHttpToolsProtocol, create_est_app, est_config

    params = WorkerParams.from_line(sys.stdin.buffer.readline())
    setup_logging(params.log_level)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # stdout is the channel to the parent; stray prints go to the log
    counts = _Counts(out)
    ca = CertificateAuthority(Path(params.pki_dir))
    engine = make_engine(params.db_url)
    enrollment = Enrollment(make_sessionmaker(engine), ca, IdentitySettings(**params.identity))
    app = create_est_app(ca, enrollment, counts.count)
    sock = socket.socket(fileno=fd)
    config = est_config(app, ca, "", 0, http=TLSHttpToolsProtocol)
    server = uvicorn.Server(config)

    def watch_parent() -> None:  # stdin closes when the parent stops or dies
        sys.stdin.buffer.read()
        server.should_exit = True

    def report() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            counts.say(READY)
        while not server.should_exit:
            time.sleep(FLUSH_S)
            counts.flush()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    reporter = threading.Thread(target=report, name="counts", daemon=True)
    reporter.start()
    try:
        server.run(sockets=[sock])
    finally:
        server.should_exit = True
        reporter.join(FLUSH_S * 4)
        app.close()
        counts.flush()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
