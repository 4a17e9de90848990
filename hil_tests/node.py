"""Launch the MicroPython node (unix port) as a real process for the rig, demo and tests.

``node_process`` writes the node's JSON config into ``workdir`` and returns an unstarted
``NodeProcess`` running ``micropython -X heapsize=144k <app>/main.py <workdir>/node.json``
(the heap of a small microcontroller). ``<app>`` is the deploy tree that ``make firmware``
makes (``firmware.build``: the manifest's modules as .mpy, with the simulated board),
built into ``workdir/app``: what runs is what a board runs, loaded without compiling.
``source=True`` runs firmware/*.py instead. Reconnect timings default to short values
that suit a rig on one machine; ``extra`` overrides any config key.

``NodeProcess`` is the board as well: when the node resets (the simulated watchdog
fires, or a reboot command), the process ends with ``reset_cause`` written in its
sim_dir, and the board starts it again, as a microcontroller boots after a reset.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from firmware.build import build
from fleet_server.identity.ca import DeviceCredentials
from hil_tests.procs import REPO, RIG_RECONNECT, Process, micropython_bin

HEAP = "144k"
FIRMWARE = REPO / "firmware"
MAX_BOOTS = 50  # a node that resets more often than this in one rig run is left down


class NodeProcess(Process):
    """The node on the unix port, restarted after each reset like a board.

    ``stop()`` is a clean stop: the unix port has no SIGTERM handler (no ``signal``
    module), but it turns SIGINT into KeyboardInterrupt, on which the node publishes its
    offline status and disconnects. SIGTERM, then SIGKILL, follow if it does not exit.
    ``kill()`` is a power cut: the board stays off until ``start()``.
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, cwd: Path, sim_dir: Path
    ) -> None:
        super().__init__(name, argv, log_path, cwd=cwd)
        self.sim_dir = Path(sim_dir)
        self.boots = 0
        self.resets: list[str] = []  # reset causes, in order
        self._down = threading.Event()
        self._board: threading.Thread | None = None

    def start(self) -> NodeProcess:
        self._down.clear()
        self.boots += 1
        super().start()
        if self._board is None or not self._board.is_alive():
            self._board = threading.Thread(target=self._watch, name=f"board-{self.name}")
            self._board.daemon = True
            self._board.start()
        return self

    def _watch(self) -> None:
        while not self._down.wait(0.05):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            cause_file = self.sim_dir / "reset_cause"
            if self._down.is_set() or not cause_file.exists() or self.boots >= MAX_BOOTS:
                return
            self.resets.append(cause_file.read_text().strip())
            self._close_log()
            self.boots += 1
            Process.start(self)

    def _halt(self) -> None:
        self._down.set()
        if self._board is not None:
            self._board.join(timeout=5)

    def stop(self, grace: float = 15.0) -> int | None:
        self._halt()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        return super().stop(grace)

    def kill(self) -> None:
        self._halt()
        super().kill()

    def wait_boots(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.boots < count and time.monotonic() < deadline:
            time.sleep(0.05)


def node_config(
    creds: DeviceCredentials,
    broker_port: int,
    workdir: Path,
    *,
    heartbeat_s: float = 2,
    keepalive_s: int = 10,
    sim_dir: Path | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The node's config (see firmware/config.py LOCAL and SETTINGS for every key)."""
    config: dict[str, object] = {
        "device_id": creds.device_id,
        "broker_host": "localhost",
        "broker_port": broker_port,
        "ca": str(creds.directory / "root.der"),
        "cert": str(creds.directory / "cert.der"),
        "key": str(creds.directory / "key.der"),
        "heartbeat_s": heartbeat_s,
        "keepalive_s": keepalive_s,
        "hal": "sim",
        "sim_dir": str(sim_dir if sim_dir is not None else Path(workdir) / "sim"),
        "state_dir": str(Path(workdir) / "state"),
        **RIG_RECONNECT,
        # most rigs watch the node with an observer, not a fleet server: no receipts would
        # come, so a PUBACK delivers; a rig with a server passes receipt_timeout_s > 0
        "receipt_timeout_s": 0,
    }
    config.update(extra or {})
    return config


def node_process(
    creds: DeviceCredentials,
    broker_port: int,
    workdir: Path,
    *,
    heartbeat_s: float = 2,
    keepalive_s: int = 10,
    sim_dir: Path | None = None,
    extra: Mapping[str, object] | None = None,
    source: bool = False,
    heap: str = HEAP,
) -> NodeProcess:
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = node_config(
        creds,
        broker_port,
        workdir,
        heartbeat_s=heartbeat_s,
        keepalive_s=keepalive_s,
        sim_dir=sim_dir,
        extra=extra,
    )
    path = workdir / "node.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if source:
        app = FIRMWARE
    else:
        app = workdir / "app"
        build(app, sim=True)
    sim = Path(str(config["sim_dir"]))
    sim.mkdir(parents=True, exist_ok=True)
    return NodeProcess(
        f"micropython-{creds.device_id}",
        [micropython_bin(), "-X", f"heapsize={heap}", str(app / "main.py"), str(path)],
        workdir / "node.log",
        cwd=workdir,
        sim_dir=sim,
    )
