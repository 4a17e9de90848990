"""How the tool reaches a box or a node: one interface, three ways.

- ``LocalDirTransport``: a directory stands in for the device's filesystem (the virtual box
  of the tests, or the tool running on the box itself with root ``/``); commands run here.
- ``SshTransport``: a Linux box over ``ssh`` (commands run on the box, files written with an
  atomic rename there). Not exercised by the tests: no SSH host is available here.
- ``MpremoteTransport``: a MicroPython board over USB serial with ``mpremote`` (files copied
  then renamed on the board, reset). Commands cannot run there; the node needs none.
  Not exercised by the tests: no board is attached here; the virtual node is a directory.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.files import atomic_write
from provisioning.errors import TransportError


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Transport(ABC):
    name = "transport"

    @abstractmethod
    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file on the device atomically (parents created)."""

    @abstractmethod
    def read(self, path: str) -> bytes: ...

    @abstractmethod
    def run(self, argv: list[str], stdin: str = "", timeout: float = 120.0) -> Result:
        """Run a command on the device."""

    def python(self) -> list[str]:
        """The command that starts the camfleet Python on the device."""
        return ["python3"]

    def reset(self) -> None:
        """Restart the device's software (agent service or the board)."""
        return

    def where(self, path: str) -> str:
        """How a device path is written in configs on the device."""
        return path


class LocalDirTransport(Transport):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _local(self, path: str) -> Path:
        rel = PurePosixPath(path)
        if rel.is_absolute():
            rel = rel.relative_to("/")
        if ".." in rel.parts:
            raise TransportError(f"path {path!r} leaves the device root")
        return self.root / rel

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = self._local(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(str(target), data, mode)
        except OSError as exc:
            raise TransportError(f"cannot write {target}: {exc}") from exc

    def read(self, path: str) -> bytes:
        try:
            return self._local(path).read_bytes()
        except OSError as exc:
            raise TransportError(f"cannot read {path}: {exc}") from exc

    def run(self, argv: list[str], stdin: str = "", timeout: float = 120.0) -> Result:
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                cwd=self.root, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(f"cannot run {argv[0]}: {exc}") from exc
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def python(self) -> list[str]:
        return [sys.executable]

    def where(self, path: str) -> str:
        return str(self._local(path))

    def reset(self) -> None:
        """On the box itself (``local:/`` under systemd): restart the agent service. A
        directory standing in for a box (the virtual rig) has nothing to restart."""
        if self.root != Path("/") or not Path("/run/systemd/system").is_dir():
            return
        result = self.run(["systemctl", "restart", "camfleet-agent"])
        if result.returncode != 0:
            raise TransportError(
                f"agent not restarted: {result.stderr.strip()}",
                "run 'systemctl status camfleet-agent' on the box",
            )


class SshTransport(Transport):
    name = "ssh"

    def __init__(self, host: str, *, port: int = 22, options: list[str] | None = None) -> None:
        self.host = host
        self.base = ["ssh", "-p", str(port), "-o", "BatchMode=yes", *(options or []), host]

    def run(self, argv: list[str], stdin: str = "", timeout: float = 120.0) -> Result:
        try:
            proc = subprocess.run(
                [*self.base, "--", shlex.join(argv)], input=stdin, capture_output=True,
                text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(
                f"ssh {self.host}: {exc}", "check the cable/Wi-Fi and that sshd runs on the box"
            ) from exc
        if proc.returncode == 255:
            raise TransportError(f"ssh {self.host}: {proc.stderr.strip()}", "check SSH access")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        q = shlex.quote(path)
        tmp = shlex.quote(path + ".tmp")
        script = (
            f"mkdir -p $(dirname {q}) && umask 077 && cat > {tmp} && sync {tmp} "
            f"&& chmod {mode:o} {tmp} && mv -f {tmp} {q}"
        )
        try:
            proc = subprocess.run(
                [*self.base, "--", script], input=data, capture_output=True, timeout=60,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(f"ssh {self.host}: {exc}") from exc
        if proc.returncode != 0:
            raise TransportError(f"cannot write {path} on {self.host}: {proc.stderr!r}")

    def read(self, path: str) -> bytes:
        proc = subprocess.run(
            [*self.base, "--", f"cat {shlex.quote(path)}"], capture_output=True, timeout=60,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TransportError(f"cannot read {path} on {self.host}")
        return proc.stdout

    def reset(self) -> None:
        result = self.run(["sudo", "systemctl", "restart", "camfleet-agent"])
        if result.returncode != 0:
            raise TransportError(
                f"agent not restarted: {result.stderr.strip()}",
                "run 'sudo systemctl status camfleet-agent' on the box",
            )


class MpremoteTransport(Transport):
    """A MicroPython board: ``mpremote connect <port> ...``."""

    name = "mpremote"

    def __init__(self, port: str) -> None:
        self.base = [sys.executable, "-m", "mpremote", "connect", port]

    def _mp(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                [*self.base, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransportError(
                f"mpremote: {exc}", "check the USB cable and the serial port name"
            ) from exc
        if proc.returncode != 0:
            raise TransportError(f"mpremote {args[0]}: {proc.stderr.strip()}")
        return proc

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        del mode  # the board's filesystem has no modes
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            parent = str(PurePosixPath(path).parent)
            if parent not in ("", ".", "/"):
                self._mp("exec", f"import os\ntry:\n os.mkdir({parent!r})\nexcept OSError:\n pass")
            self._mp("fs", "cp", tmp.name, f":{path}.tmp")
            self._mp("exec", f"import os\nos.rename({path + '.tmp'!r}, {path!r})")
        finally:
            os.unlink(tmp.name)

    def read(self, path: str) -> bytes:
        return self._mp("fs", "cat", f":{path}").stdout.encode()

    def run(self, argv: list[str], stdin: str = "", timeout: float = 120.0) -> Result:
        raise TransportError("a MicroPython board cannot run commands")

    def reset(self) -> None:
        self._mp("reset")
