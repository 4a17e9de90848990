"""Load generator of the enrollment bench: client processes with threads, every enrollment a
new TCP connection with a full TLS handshake (each thread has its own SSL context and never
offers a session; the answer's ``session_reused`` is counted), one distinct device each.

The request is RFC 7030 ``simpleenroll`` as ``agent.identity.est_client`` sends it (HTTP Basic
device:token, base64 PKCS#10), written by hand so that the clients cost the shared two
cores as little as Python allows; the answers are checked afterwards, off the clock
(``bench_enroll.verify``).
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

PATH = "/.well-known/est/simpleenroll"


@dataclass(frozen=True)
class Job:
    device_id: str
    request: bytes


@dataclass(frozen=True)
class Answer:
    device_id: str
    status: int
    body: bytes
    reused: bool
    error: str = ""


def request_bytes(host: str, port: int, device_id: str, token: str, csr_der: bytes) -> bytes:
    body = base64.b64encode(csr_der)
    basic = base64.b64encode(f"{device_id}:{token}".encode()).decode()
    head = (
        f"POST {PATH} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/pkcs10\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Authorization: Basic {basic}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _read_response(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the body")
        body += chunk
    return status, body


def enroll_once(ctx: ssl.SSLContext, host: str, port: int, job: Job) -> Answer:
    try:
        with socket.create_connection((host, port), timeout=60) as raw:
            # as http.client (agent.identity.est_client) and curl do: no Nagle delay between the
            # handshake's last flight and the request
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(job.request)
                status, body = _read_response(tls)
                return Answer(job.device_id, status, body, bool(tls.session_reused))
    except (OSError, ValueError, IndexError) as exc:
        return Answer(job.device_id, 0, b"", False, f"{type(exc).__name__}: {exc}")


def _client_process(
    host: str,
    port: int,
    cafile: str,
    jobs: list[Job],
    threads: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in jobs:
        todo.put(job)
    answers: list[Answer] = []
    lock = threading.Lock()

    def worker() -> None:
        ctx = ssl.create_default_context(cafile=cafile)  # own context: no shared sessions
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            answer = enroll_once(ctx, host, port, job)
            with lock:
                answers.append(answer)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    ready.set()
    go.wait(120)
    cpu = time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join(600)
    out.put((time.monotonic(), time.process_time() - cpu, answers))


@dataclass(frozen=True)
class LoadResult:
    elapsed_s: float
    client_cpu_s: float
    answers: list[Answer]


def run_load(
    host: str, port: int, cafile: str, jobs: list[Job], processes: int, threads: int
) -> LoadResult:
    """All ``jobs`` from ``processes`` x ``threads`` clients; the clock runs from the go
    signal to the last client process's end."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [
        ctx.Process(
            target=_client_process,
            args=(host, port, cafile, jobs[i::processes], threads, readies[i], go, out),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a client process did not start")
    start = time.monotonic()
    go.set()
    ends: list[float] = []
    cpu = 0.0
    answers: list[Answer] = []
    for _ in procs:
        end, used, got = out.get(timeout=900)
        ends.append(end)
        cpu += used
        answers.extend(got)
    for p in procs:
        p.join(60)
    return LoadResult(max(ends) - start, cpu, answers)
