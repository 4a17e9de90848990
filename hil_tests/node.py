"""Launch the MicroPython node (unix port) as a real process for the rig, demo and tests.

``node_process`` writes the node's JSON config into ``workdir`` and returns an unstarted
``NodeProcess`` running ``micropython -X heapsize=128k firmware/main.py <workdir>/node.json``
(the heap of a small microcontroller). Reconnect timings default to short values that suit
a rig on one machine; ``extra`` overrides any config key (for instance ``ca``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from fleet_server.ca import DeviceCredentials
from hil_tests.procs import REPO, RIG_RECONNECT, Process, micropython_bin

HEAP = "128k"
MAIN = REPO / "firmware" / "main.py"


class NodeProcess(Process):
    """The node on the unix port.

    ``stop()`` is a clean stop: the unix port has no SIGTERM handler (no ``signal``
    module), but it turns SIGINT into KeyboardInterrupt, on which the node publishes its
    offline status and disconnects. SIGTERM, then SIGKILL, follow if it does not exit.
    """

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        return super().stop(grace)


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
    """The node's config (see firmware/node.py _CONFIG for every key)."""
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
        **RIG_RECONNECT,
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
    return NodeProcess(
        f"micropython-{creds.device_id}",
        [micropython_bin(), "-X", f"heapsize={HEAP}", str(MAIN), str(path)],
        workdir / "node.log",
        cwd=workdir,
    )
