"""Start a fleet server process against a broker, for tests, the demo and the rigs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common.settings import deep_merge, dump_toml
from hil_tests.procs import Process, RigError, free_port, wait_for


def write_server_config(
    path: Path,
    *,
    data_dir: Path,
    pki_dir: Path,
    broker_port: int,
    api_port: int,
    database_url: str | None = None,
    client_id: str = "fleet-server-1",
    grace: float = 3.0,
    extra: dict[str, object] | None = None,
) -> Path:
    config: dict[str, object] = {
        "data_dir": str(data_dir),
        "pki_path": str(pki_dir),
        "database_url": database_url,
        "log_level": "INFO",
        # tests share a broker: a stopped server leaves the group unless a test asks
        # otherwise (a kept session would take a share of the next test's messages)
        "mqtt": {
            "host": "localhost",
            "port": broker_port,
            "client_id": client_id,
            "keep_session_on_stop": False,
        },
        "broker": {"listen_port": broker_port},
        "api": {"host": "127.0.0.1", "port": api_port},
        "health": {"heartbeat_grace": grace, "check_interval_s": 0.25},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(deep_merge(config, extra or {})), encoding="utf-8")
    return path


class ServerProcess(Process):
    def __init__(
        self,
        workdir: Path,
        pki_dir: Path,
        broker_port: int,
        *,
        database_url: str | None = None,
        client_id: str = "fleet-server-1",
        grace: float = 3.0,
        api_port: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        self.api_port = api_port or free_port()
        self.reader_token = ""
        self.config_path = write_server_config(
            workdir / "server.toml",
            data_dir=workdir,
            pki_dir=pki_dir,
            broker_port=broker_port,
            api_port=self.api_port,
            database_url=database_url,
            client_id=client_id,
            grace=grace,
            extra=extra,
        )
        super().__init__(
            client_id,
            [sys.executable, "-m", "fleet_server.cli", "--config", str(self.config_path), "run"],
            workdir / f"{client_id}.log",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def add_user(self, name: str, role: str) -> str:
        """A person with ``role`` through the real CLI; their API token."""
        cli = [sys.executable, "-m", "fleet_server.cli", "--config", str(self.config_path)]
        out = subprocess.run(
            [*cli, "add-user", name, "--role", role],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    def _headers(self, token: str | None) -> dict[str, str]:
        use = token if token is not None else self.reader_token
        return {"Authorization": f"Bearer {use}"} if use else {}

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """GET as the rig's read-only user (or with ``token``; "" for none)."""
        req = urllib.request.Request(self.base_url + path, headers=self._headers(token))
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = resp.read()
                ctype = resp.headers.get("content-type", "")
                return resp.status, json.loads(body) if "json" in ctype else body.decode()
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def post(
        self, path: str, body: object, method: str = "POST", token: str | None = ""
    ) -> tuple[int, Any]:
        """POST (no token unless given: writes need a role the rig's reader does not have)."""
        req = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self._headers(token)},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def put(self, path: str, body: object) -> tuple[int, Any]:
        return self.post(path, body, method="PUT")

    def ready(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def start_and_wait(self, timeout: float = 20.0) -> ServerProcess:
        if not self.reader_token:  # the rig reads the API as a viewer
            self.reader_token = self.add_user(f"rig-{uuid.uuid4().hex[:10]}", "viewer")
        self.start()
        wait_for(lambda: self.ready() or not self.alive(), timeout, what="fleet server API")
        if not self.alive():
            raise RigError(f"fleet server exited:\n{self.log_text()[-3000:]}")
        return self

    def device(self, device_id: str) -> dict[str, Any] | None:
        status, body = self.get(f"/api/devices/{device_id}")
        return body if status == 200 else None

    def metric(self, name: str, labels: str = "") -> float:
        """A sample from /metrics, e.g. metric("camfleet_ingest_rejected_total", 'reason="x"')."""
        _status, text = self.get("/metrics")
        want = f"{name}{{{labels}}}" if labels else name
        for line in str(text).splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0
