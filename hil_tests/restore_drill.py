"""The restore drill (docs/deploy.md, "Backups"): back up a running fleet, lose the server,
restore onto a fresh one (another state directory and database), and time until every
device reports again — with its own certificate, no re-provisioning.

Real parts: Mosquitto with TLS client certificates, the fleet server as a process, the
``camfleet-server backup`` and ``restore`` commands, and simulated devices (fleet_sim, one
certificate each) that reconnect with the contract's backoff. One device is revoked before
the backup: after the restore it must stay out (the CRL and the broker's dynamic-security
state came back with the backup). Used by tests/test_backup.py and bench/bench_restore.py.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.checks import every_item
from hil_tests.procs import Broker, Process, RigError, free_port, wait_for
from hil_tests.server import ServerProcess, write_server_config

CLI = [sys.executable, "-m", "fleet_server.cli"]


@dataclass(frozen=True)
class DrillConfig:
    devices: int = 6
    interval_s: float = 1.0  # heartbeat period of the simulated devices
    first_spread_s: float = 2.0  # the devices' first reconnect spread (the contract: 20 s)
    cap_s: float = 5.0  # their reconnect backoff cap
    timeout_s: float = 120.0  # bound of every wait
    grace: float = 3.0  # heartbeat intervals before the server marks a device offline


@dataclass
class DrillResult:
    archive: Path
    backup_s: float = 0.0
    restore_s: float = 0.0  # the restore command alone
    reconnect_s: float = 0.0  # from the start of the restore to every device reporting
    reporting: int = 0
    revoked: str = ""
    admin_token: str = ""
    old: dict[str, Any] = field(default_factory=dict)  # what the old server showed last


def cli(config: Path, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """``camfleet-server --config <config> <args>`` as a process (its own exit code)."""
    return subprocess.run([*CLI, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def _must(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode != 0:
        raise RigError(f"{done.args[3:]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def server_extra(data: Path) -> dict[str, object]:
    """The drill server's extra settings: online TUF keys beside its state."""
    return {"ota": {"enabled": True, "keys_dir": str(data / "ota-keys")}}


def _iso_after(text: str, t0: float) -> bool:
    return dt.datetime.fromisoformat(text).timestamp() > t0


def reporting_since(server: ServerProcess, t0: float, skip: str) -> int:
    """Devices (but ``skip``) online whose last message came after ``t0`` (unix time)."""
    devices = every_item(server, "/api/devices")
    return sum(1 for d in devices if d["id"] != skip and d["state"] == "online"
               and _iso_after(d["last_seen"], t0))  # fmt: skip


class Fleet:
    """The old server with its broker, the simulated devices, then the restored server."""

    def __init__(self, work: Path, database_a: str, database_b: str, cfg: DrillConfig) -> None:
        self.work, self.cfg = work, cfg
        self.urls = {"a": database_a, "b": database_b}
        self.port = free_port()
        self.ca = CertificateAuthority(work / "a" / "pki")
        self.procs: list[Process] = []
        self.server: ServerProcess | None = None

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def start_old(self) -> tuple[ServerProcess, str]:
        """The old server and an admin's token (its reader: the rig reads as that admin)."""
        a = self.work / "a"
        self.ca.init()
        config = write_server_config(a / "server.toml", data_dir=a, pki_dir=a / "pki",
                                     broker_port=self.port, api_port=free_port(),
                                     database_url=self.urls["a"], grace=self.cfg.grace,
                                     extra=server_extra(a))  # fmt: skip
        _must(cli(config, "release", "init", "--root-threshold", "1", "--root-keys", "1"))
        token = _must(cli(config, "add-user", "drill-admin", "--role", "admin")).split()[-1]
        broker = Broker(self.ca, a / "broker", port=self.port).start()
        self.procs.append(broker)
        return self._server(a, "fleet-a", token), token

    def _server(self, data: Path, client_id: str, token: str) -> ServerProcess:
        server = ServerProcess(data, data / "pki", self.port, database_url=self.urls[data.name],
                               client_id=client_id, grace=self.cfg.grace,
                               extra=server_extra(data))  # fmt: skip
        server.reader_token = token
        self.procs.append(server.start_and_wait(timeout=min(60.0, self.cfg.timeout_s)))
        self.server = server
        return server

    def start_devices(self) -> list[str]:
        creds = self.work / "devices"
        ids = [f"drill-{i:04d}" for i in range(self.cfg.devices)]
        for dev in ids:
            self.ca.issue_device(dev, creds / dev, days=2)
        c = self.cfg
        sim = Process(
            "fleet-sim",
            [sys.executable, "-m", "hil_tests.fleet_sim", "--creds", str(creds), "--root",
             str(self.ca.root_cert_path), "--port", str(self.port), "--interval",
             str(c.interval_s), "--rate", "200", "--first-spread", str(c.first_spread_s),
             "--base", "0.5", "--cap", str(c.cap_s), "--duration", str(4 * c.timeout_s),
             "--stats", str(self.work / "sim.json")],
            self.work / "sim.log",
        ).start()  # fmt: skip
        self.procs.insert(0, sim)  # stopped last
        return ids

    def lose_old(self) -> None:
        """The old server machine is gone: server killed, broker stopped."""
        for proc in list(self.procs[1:]):
            proc.kill()
            proc.stop()
            self.procs.remove(proc)

    def start_restored(self, token: str) -> ServerProcess:
        """The restored server, read with the old server's admin token (people came back)."""
        b = self.work / "b"
        ca = CertificateAuthority(b / "pki")
        self.procs.append(Broker(ca, b / "broker", port=self.port).start())
        return self._server(b, "fleet-b", token)

    def fresh_config(self, name: str, database_url: str) -> Path:
        d = self.work / name
        return write_server_config(d / "server.toml", data_dir=d, pki_dir=d / "pki",
                                   broker_port=self.port, api_port=free_port(),
                                   database_url=database_url, grace=self.cfg.grace,
                                   extra=server_extra(d))  # fmt: skip


def run_drill(
    work: Path, database_a: str, database_b: str, cfg: DrillConfig,
    between: Callable[[Fleet, Path], None] | None = None,
    after: Callable[[ServerProcess, DrillResult], None] | None = None,
) -> DrillResult:  # fmt: skip
    """The whole drill; ``between(fleet, archive)`` runs after the old server is gone and
    before the restore (a test refuses broken archives there), ``after(server, result)``
    with the restored server still running."""
    fleet = Fleet(work, database_a, database_b, cfg)
    result = DrillResult(work / "backup.tar.gz")
    try:
        old, result.admin_token = fleet.start_old()
        ids = fleet.start_devices()
        wait_for(lambda: reporting_since(old, 0.0, "") == len(ids), cfg.timeout_s,
                 interval=0.5, what=f"{len(ids)} devices online")  # fmt: skip
        result.revoked = ids[-1]
        status, body = old.post(f"/api/devices/{result.revoked}/revoke",
                                {"reason": "drill"}, token=result.admin_token)  # fmt: skip
        if status != 200:
            raise RigError(f"revoke answered {status}: {body}")
        wait_for(lambda: (old.device(result.revoked) or {}).get("state") == "offline",
                 cfg.timeout_s, interval=0.5, what="the revoked device offline")  # fmt: skip
        t0 = time.monotonic()
        _must(cli(old.config_path, "backup", "--out", str(result.archive)))
        result.backup_s = time.monotonic() - t0
        result.old = {"devices": len(every_item(old, "/api/devices"))}
        fleet.lose_old()
        config_b = fleet.fresh_config("b", database_b)
        if between is not None:
            between(fleet, result.archive)
        start_wall, t0 = time.time(), time.monotonic()
        _must(cli(config_b, "restore", str(result.archive)))
        result.restore_s = time.monotonic() - t0
        new = fleet.start_restored(result.admin_token)
        want = len(ids) - 1
        wait_for(lambda: reporting_since(new, start_wall, result.revoked) == want,
                 cfg.timeout_s, interval=0.25, what=f"{want} devices reporting again")  # fmt: skip
        result.reconnect_s = time.monotonic() - t0
        result.reporting = reporting_since(new, start_wall, result.revoked)
        if after is not None:
            after(new, result)
    finally:
        fleet.close()
    return result
