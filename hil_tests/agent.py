"""Launch the edge agent as a real process for the virtual rig, the demo and the tests.

``agent_process`` writes the agent's TOML config into ``workdir`` and returns an unstarted
``Process`` running ``python -m agent.cli --config <workdir>/agent.toml``. The reconnect
timings default to short values that suit a rig on one machine; pass ``extra`` to change
any setting (nested tables merge, e.g. ``{"mqtt": {"reconnect_first_spread_s": 0.2}}``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.settings import deep_merge, dump_toml
from fleet_server.identity.ca import DeviceCredentials
from hil_tests.procs import REPO, RIG_RECONNECT, Process


def agent_config(
    creds: DeviceCredentials,
    broker_port: int,
    workdir: Path,
    *,
    heartbeat_s: float = 2,
    keepalive_s: int = 10,
    camera_dir: Path | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    camera: dict[str, object] = (
        {"type": "files", "path": str(camera_dir), "fps": 5.0}
        if camera_dir is not None
        else {"type": "synthetic", "fps": 5.0}
    )
    config: dict[str, object] = {
        "device_id": creds.device_id,
        "heartbeat_s": heartbeat_s,
        "state_dir": str(Path(workdir) / "state"),
        "log_level": "INFO",
        "mqtt": {
            "host": "localhost",
            "port": broker_port,
            "ca": str(creds.root_pem),
            "cert": str(creds.cert_pem),
            "key": str(creds.key_pem),
            "keepalive_s": keepalive_s,
            **RIG_RECONNECT,
        },
        "camera": camera,
    }
    return deep_merge(config, extra or {})


def agent_process(
    creds: DeviceCredentials,
    broker_port: int,
    workdir: Path,
    *,
    heartbeat_s: float = 2,
    keepalive_s: int = 10,
    camera_dir: Path | None = None,
    extra: dict[str, object] | None = None,
) -> Process:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = agent_config(
        creds,
        broker_port,
        workdir,
        heartbeat_s=heartbeat_s,
        keepalive_s=keepalive_s,
        camera_dir=camera_dir,
        extra=extra,
    )
    path = workdir / "agent.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    return Process(
        f"agent-{creds.device_id}",
        [sys.executable, "-m", "agent.cli", "--config", str(path)],
        workdir / "agent.log",
        cwd=REPO,
    )
