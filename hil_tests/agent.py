"""Launch the edge agent as a real process for the virtual rig, the demo and the tests.

``agent_process`` writes the agent's TOML config into ``workdir`` and returns an unstarted
``Process`` running ``python -m agent.cli --config <workdir>/agent.toml``. The reconnect
timings default to short values that suit a rig on one machine; pass ``extra`` to change
any setting (nested tables merge, e.g. ``{"mqtt": {"reconnect_first_spread_s": 0.2}}``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from fleet_server.ca import DeviceCredentials
from hil_tests.procs import REPO, Process

RIG_RECONNECT = {
    "reconnect_base_s": 0.5,
    "reconnect_cap_s": 5.0,
    "reconnect_first_spread_s": 1.0,
}


def _merge(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r} here")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: dict[str, object], prefix: str = "") -> str:
    """A small TOML writer for configs: scalars, lists and nested tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, object]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, table in tables:
        name = f"{prefix}{key}"
        out += f"\n[{name}]\n" + to_toml(table, name + ".")
    return out


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
    return _merge(config, extra or {})


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
        creds, broker_port, workdir, heartbeat_s=heartbeat_s, keepalive_s=keepalive_s,
        camera_dir=camera_dir, extra=extra,
    )
    path = workdir / "agent.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return Process(
        f"agent-{creds.device_id}",
        [sys.executable, "-m", "agent.cli", "--config", str(path)],
        workdir / "agent.log",
        cwd=REPO,
    )
