"""A fleet server with its EST listener and a first admin, for tests, the bench and the rig.

``IdentityServer`` adds an admin through the real CLI (``camfleet-server add-user``), starts
the real server process with ``[identity] est_port`` set and the broker's pid file (so a
revocation reloads that broker), and offers a small authenticated client for the API.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent.identity.est_client import EstClient, EstError
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.procs import Broker, free_port, wait_for
from hil_tests.server import ServerProcess


class IdentityServer(ServerProcess):
    def __init__(
        self,
        workdir: Path,
        ca: CertificateAuthority,
        broker: Broker,
        *,
        database_url: str | None = None,
        identity: dict[str, object] | None = None,
        client_id: str = "fleet-server-1",  # one shared-subscription member per broker
        extra: dict[str, object] | None = None,
    ) -> None:
        self.est_port = free_port()
        self.ca = ca
        settings: dict[str, object] = {
            "est_port": self.est_port,
            "broker_pid_file": str(broker.layout.pid_file),
            **(identity or {}),
        }
        super().__init__(
            workdir,
            ca.dir,
            broker.port,
            database_url=database_url,
            client_id=client_id,
            extra={**(extra or {}), "identity": settings},
        )
        self.admin_token = ""

    @property
    def est_url(self) -> str:
        return f"https://localhost:{self.est_port}"

    def start_all(self, timeout: float = 60.0) -> IdentityServer:
        self.admin_token = self.add_user("admin", "admin")
        try:
            self.start_and_wait(timeout)
            wait_for(self.est_serves, timeout, interval=0.2, what="EST answers")
        except BaseException:
            self.stop()  # a server that did not come up must not outlive the test
            raise
        return self

    def est_serves(self) -> bool:
        """True when ``/cacerts`` answers over TLS (a worker process is up)."""
        try:
            EstClient(self.est_url, self.ca.root_cert_path, timeout=5).cacerts()
        except EstError:
            return False
        return True

    def est_workers_ready(self) -> int:
        """How many EST worker processes have said they serve (from the server's log)."""
        return len(re.findall(r"EST worker \d+ \(pid \d+\) ready", self.log_text()))

    def call(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, Any]:
        """An API call with a bearer token (the admin's unless given)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw

    def ui_session(self, token: str | None = None) -> str:
        """Sign in to the dashboard as the browser does; the session cookie's value."""
        req = urllib.request.Request(
            self.base_url + "/ui/login",
            data=json.dumps({"token": token or self.admin_token}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=20) as resp:
            cookie = str(resp.headers.get("set-cookie", ""))
        name, _, rest = cookie.partition("=")
        if name != "camfleet_session":
            raise RuntimeError(f"no session cookie in {cookie!r}")
        return rest.split(";")[0]

    def token(self, device_id: str, kind: str = "agent", **extra: object) -> str:
        status, body = self.call(
            "POST", "/api/enrollment-tokens", {"device_id": device_id, "kind": kind, **extra}
        )
        if status != 201:
            raise RuntimeError(f"token for {device_id} refused: {status} {body}")
        return str(body["token"])
