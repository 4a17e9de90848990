"""The fleet server as the packaged units run it: `camfleet-server run --role api|ingest|est`
as separate processes (fleet_server/roles.py, docs/deploy.md), the API over HTTPS only.

Real parts: TLS Mosquitto, the three server processes, a simulated device with its own
certificate. The ingest worker stores what the device sends and the API (which takes no
share of the messages itself) shows it; the EST listener answers in its own process; each
role's metrics are on 127.0.0.1; a SIGTERM ends a worker cleanly.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.procs import Broker, Process, free_port, wait_for
from hil_tests.server import write_server_config

CLI = [sys.executable, "-m", "fleet_server.cli"]


def _get(url: str, tls: ssl.SSLContext | None, token: str = "") -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=tls, timeout=5) as resp:
            body = resp.read()
            kind = resp.headers.get("content-type", "")
            return resp.status, json.loads(body) if "json" in kind else body.decode()
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:  # not listening (yet)
        return 0, None


def _two_free_ports() -> int:
    """A port p with p + 1 free too (the EST listener's metrics and ingest worker 1's)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


@pytest.mark.slow
def test_api_ingest_and_est_run_as_separate_processes(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ca.init()
    broker = Broker(ca, tmp_path / "broker").start()
    api_port, est_port, metrics_port = free_port(), free_port(), _two_free_ports()
    config = write_server_config(
        tmp_path / "server.toml", data_dir=tmp_path, pki_dir=ca.dir, broker_port=broker.port,
        api_port=api_port, client_id="fleet",
        extra={"api": {"tls": True}, "role_metrics_port": metrics_port,
               "identity": {"est_port": est_port, "est_workers": 0}},
    )  # fmt: skip
    base = [*CLI, "--config", str(config)]
    made = subprocess.run([*base, "add-user", "ops", "--role", "admin"], capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    token = made.stdout.strip().splitlines()[-1]
    procs = [Process(role, [*base, "run", "--role", role], tmp_path / f"{role}.log")
             for role in ("api", "ingest", "est")]  # fmt: skip
    dev = ca.issue_device("role-0001", tmp_path / "devices" / "role-0001")
    sim = Process("sim", [sys.executable, "-m", "hil_tests.fleet_sim", "--creds",
                          str(tmp_path / "devices"), "--root", str(ca.root_cert_path), "--port",
                          str(broker.port), "--interval", "1", "--duration", "120", "--stats",
                          str(tmp_path / "sim.json")], tmp_path / "sim.log")  # fmt: skip
    tls = ssl.create_default_context(cafile=str(ca.root_cert_path))
    api = f"https://localhost:{api_port}"
    try:
        for proc in procs:
            proc.start()
        wait_for(lambda: _get(f"{api}/healthz", tls)[0] == 200, 60, interval=0.2, what="API")
        sim.start()

        def online() -> bool:
            status, body = _get(f"{api}/api/devices/{dev.device_id}", tls, token)
            return status == 200 and body["state"] == "online" and body["last_seq"] is not None

        wait_for(online, 60, interval=0.25, what="the device stored by the ingest worker")
        # the EST listener of its own process, with the server certificate
        est = f"https://localhost:{est_port}/.well-known/est/cacerts"
        assert _get(est, tls)[0] == 200
        # each role's metrics: the ingest worker stored, the EST listener counted
        status, text = _get(f"http://127.0.0.1:{metrics_port + 1}/metrics", None)
        stored = [ln for ln in str(text).splitlines() if ln.startswith("camfleet_ingest_stored")]
        assert status == 200 and stored and float(stored[0].split()[-1]) > 0
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics", None)
        assert status == 200 and "camfleet_est_requests_total" in str(text)
        # the API process takes no share of the messages: it stores nothing itself
        status, text = _get(f"{api}/metrics", tls)
        stored = [ln for ln in str(text).splitlines() if ln.startswith("camfleet_ingest_stored")]
        assert status == 200 and all(float(ln.split()[-1]) == 0 for ln in stored)
        # no token crosses in clear: the API port speaks TLS only
        assert _get(f"http://127.0.0.1:{api_port}/healthz", None)[0] == 0
        ingest = procs[1]
        assert ingest.stop() == 0, ingest.log_text()[-2000:]  # SIGTERM: drained, session ended
        assert "ingest worker 1 stopped" in ingest.log_text()
    finally:
        sim.stop()
        for proc in procs:
            proc.stop()
        broker.stop()
