"""OTA parts of the virtual rig: an HTTPS static host of a TUF repository directory (with
HTTP Range and injectable faults) and the agent run by its launcher from release slots.

``StaticHttps`` serves a directory over TLS like any static host would (TUF does not depend
on the host): ``GET`` with ``Range: bytes=<a>-[<b>]`` answers 206 with ``Content-Range``, a
range past the end 416. It records every request's path and Range header, and can, once per
path, drop the connection after some bytes (``drop_after``) or stream without end
(``endless``).

``launcher_process`` runs ``python -m agent.ota.launch --config agent.toml``: the launcher
starts the agent from ``<slots>/current`` with ``PYTHONPATH`` set to that release directory.
"""

from __future__ import annotations

import http.server
import re
import shutil
import socketserver
import ssl
import sys
import threading
from pathlib import Path

from common.settings import dump_toml
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.agent import agent_config
from hil_tests.procs import REPO, Process, free_port

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 16 * 1024


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class StaticHttps:
    def __init__(self, root: Path, ca: CertificateAuthority, port: int | None = None) -> None:
        self.root = Path(root)
        self.port = port or free_port()
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # path suffix -> bytes sent before the drop (once)
        self.endless: set[str] = set()  # path suffixes answered with bytes without end
        self.served_bytes: dict[str, int] = {}
        self._lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(ca.broker_cert_path), str(ca.broker_key_path))
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> StaticHttps:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ranges_for(self, suffix: str) -> list[str | None]:
        with self._lock:
            return [r for p, r in self.requests if p.endswith(suffix)]

    def _take_drop(self, path: str) -> int | None:
        with self._lock:
            for suffix in list(self.drop_after):
                if path.endswith(suffix):
                    return self.drop_after.pop(suffix)
        return None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        rig = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with rig._lock:
                    rig.requests.append((path, self.headers.get("Range")))
                if any(path.endswith(s) for s in rig.endless):
                    self._endless()
                    return
                file = (rig.root / path.lstrip("/")).resolve()
                if rig.root.resolve() not in file.parents or not file.is_file():
                    self._plain(404, b"not found")
                    return
                data = file.read_bytes()
                start, end, status = 0, len(data), 200
                rng = self.headers.get("Range")
                if rng:
                    m = _RANGE.match(rng.strip())
                    if m is None:
                        self._plain(400, b"bad range")
                        return
                    start = int(m.group(1))
                    end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:end]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                drop = rig._take_drop(path)
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)
                with rig._lock:
                    rig.served_bytes[path] = rig.served_bytes.get(path, 0) + len(body)

            def _endless(self) -> None:
                self.send_response(200)
                self.end_headers()  # no length: bytes until the client hangs up
                self.close_connection = True
                sent = 0
                try:
                    while sent < 1 << 30:  # bounded: 1 GiB at most
                        self.wfile.write(b"\0" * _CHUNK)
                        sent += _CHUNK
                except OSError:
                    pass
                with rig._lock:
                    rig.served_bytes[self.path] = sent

            def _plain(self, code: int, text: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        return Handler


def launcher_process(
    creds: DeviceCredentials,
    broker_port: int,
    workdir: Path,
    ota: dict[str, object],
    *,
    heartbeat_s: float = 1,
    env: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> Process:
    """The launcher (which runs the agent from its slot) as an unstarted ``Process``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = agent_config(
        creds, broker_port, workdir, heartbeat_s=heartbeat_s, extra={"ota": ota, **(extra or {})}
    )
    path = workdir / "agent.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    return Process(
        f"launcher-{creds.device_id}",
        [sys.executable, "-m", "agent.ota.launch", "--config", str(path)],
        workdir / "agent.log",
        env=env,
        cwd=REPO,
    )


BROKEN = {
    "exits": "    raise SystemExit('broken on purpose: this release cannot start')\n",
    "hangs": "    import time\n\n    time.sleep(3600)  # broken on purpose: never connects\n",
}


def source_copy(dest: Path, broken: str | None = None) -> Path:
    """A copy of this repository's agent, common and firmware packages. ``broken`` (a key
    of ``BROKEN``) makes an agent that exits at start or hangs before it connects: a
    release that never becomes healthy."""
    for package in ("agent", "common", "firmware"):
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    if broken is not None:
        cli = dest / "agent" / "cli.py"
        anchor = "    stop = threading.Event()\n"
        text = cli.read_text()
        if anchor not in text:
            raise RuntimeError("agent/cli.py changed: cannot break it on purpose")
        cli.write_text(text.replace(anchor, anchor + BROKEN[broken], 1))
    return dest
