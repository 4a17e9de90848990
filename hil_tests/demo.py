"""make demo: the whole fleet on this machine, on real parts.

Creates (or reuses) the CA in ``demo-state/``, starts Mosquitto with TLS client
certificates, the fleet server (SQLite), two agents replaying image files as their camera
and one MicroPython node, waits until all of them are online in the API, then commissions
them and a few dozen simulated devices at sites around Bắc Ninh (some offline, some
alerting, a rollout paused mid-wave, a day of counts: hil_tests/demo_province.py), prints
what runs where, and stops everything cleanly on Ctrl-C (or after ``--duration`` seconds).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority
from hil_tests import demo_province
from hil_tests.agent import agent_process
from hil_tests.images import write_test_images
from hil_tests.node import node_process
from hil_tests.procs import REPO, Broker, Process, RigError, free_port, port_open, wait_for
from hil_tests.server import ServerProcess

AGENTS = ("cam-demo-01", "cam-demo-02")
DETECTING = "cam-demo-01"  # runs the real detector on a replayed street scene
NODES = ("node-demo-01",)


def _port(preferred: int) -> int:
    return preferred if preferred and not port_open(preferred) else free_port()


def _stop_all(procs: list[Process]) -> None:
    for proc in reversed(procs):
        proc.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camfleet-demo", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=REPO / "demo-state")
    parser.add_argument("--broker-port", type=int, default=8883)
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--duration", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument(
        "--no-detection", action="store_true", help="all agents only report (no detector)"
    )
    parser.add_argument(
        "--no-province", action="store_true",
        help="no sites around Bắc Ninh, no simulated devices (hil_tests/demo_province.py)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    state: Path = args.state_dir.resolve()
    ca = CertificateAuthority(state / "pki")
    ca.init()
    broker_port, api_port = _port(args.broker_port), _port(args.api_port)
    stopping = False

    def _on_signal(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    procs: list[Process] = []
    try:
        broker = Broker(ca, state / "broker", broker_port).start()
        procs.append(broker)
        server = ServerProcess(state / "server", ca.dir, broker_port, api_port=api_port)
        login = server.add_user(f"demo-admin-{int(time.time())}", "admin")
        procs.append(server.start_and_wait())
        _start_devices(ca, state, broker_port, procs, detect=not args.no_detection)
        everyone = (*AGENTS, *NODES)
        wait_for(
            lambda: (
                stopping or all((server.device(d) or {}).get("state") == "online" for d in everyone)
            ),
            60,
            what="every device online",
        )
        if not args.no_province:
            _province(ca, state, broker_port, procs, everyone)
        _print_banner(server, broker, procs, state, login)
        started = time.monotonic()
        next_line = 0.0
        while not stopping:
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if time.monotonic() >= next_line:
                _print_status(server)
                next_line = time.monotonic() + 10
            dead = [p.name for p in procs if not p.alive()]
            if dead:
                print(f"stopped unexpectedly: {', '.join(dead)} (see their logs)", flush=True)
                return 1
            time.sleep(0.2)
    except RigError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for proc in procs:
            print(f"--- {proc.name} ({proc.log_path})\n{proc.log_text()[-1500:]}", file=sys.stderr)
        return 1
    finally:
        print("stopping everything ...", flush=True)
        _stop_all(procs)
        print("stopped.", flush=True)
    return 0


def _start_devices(
    ca: CertificateAuthority, state: Path, broker_port: int, procs: list[Process], detect: bool
) -> None:
    """The two agents (one with the detector unless ``detect`` is off) and the node."""
    images = write_test_images(state / "camera-images", count=24)
    for device_id in AGENTS:
        creds = ca.issue_device(device_id, state / "devices" / device_id)
        camera, extra = images[0].parent, None
        if device_id == DETECTING and detect:
            camera, extra = _detection(state)
        procs.append(
            agent_process(
                creds, broker_port, state / "agents" / device_id, heartbeat_s=5,
                keepalive_s=15, camera_dir=camera, extra=extra,
            ).start()
        )  # fmt: skip
    for device_id in NODES:
        creds = ca.issue_device(device_id, state / "devices" / device_id)
        node_dir = state / "nodes" / device_id
        procs.append(
            node_process(creds, broker_port, node_dir, heartbeat_s=5, keepalive_s=15,
                         sim_dir=node_dir / "sim").start()
        )  # fmt: skip


def _province(
    ca: CertificateAuthority, state: Path, broker_port: int, procs: list[Process],
    real: Sequence[str],
) -> None:  # fmt: skip
    """Sites around Bắc Ninh, simulated devices, problems, counts (hil_tests/demo_province)."""
    procs.append(demo_province.start_simulated(ca, state, broker_port))
    url = f"sqlite:///{state / 'server' / 'fleet.db'}"
    added = demo_province.populate(make_sessionmaker(make_engine(url)), real)
    print(f"province: {added}", flush=True)


def _detection(state: Path) -> tuple[Path, dict[str, object]]:
    """Frames of people crossing a street (real photos moving over a background) and the
    agent's pipeline: the real model, a counting line across the middle, counts every 30 s."""
    from agent.vision.model_fetch import ensure_model
    from hil_tests.scenes import crossing_scene, write_frames

    frames = state / "street-frames"
    if not frames.exists():
        write_frames(crossing_scene(count=2, frames_each=30, gap=10), frames, 80)
    pipeline: dict[str, object] = {
        "detector": {"model_dir": str(ensure_model().folder), "threads": 1},
        "lines": [{"name": "middle", "a": [0.5, 0.0], "b": [0.5, 1.0],
                   "directions": ["eastbound", "westbound"]}],
        "counts_every_s": 30.0,
    }  # fmt: skip
    camera = {"type": "files", "path": str(frames), "fps": 5.0}
    return frames, {"pipeline": pipeline, "camera": camera}


def _print_banner(
    server: ServerProcess, broker: Broker, procs: list[Process], state: Path, login: str
) -> None:
    print("\ncamfleet demo is running\n", flush=True)
    print(f"  dashboard     {server.base_url}/ui/   (sign in with: {login})")
    api = server.base_url
    print(f"  REST API      {api}/api/devices   (OpenAPI: {api}/openapi.json)")
    print(f"  metrics       {server.base_url}/metrics")
    print(f"  broker        mqtts://localhost:{broker.port} (TLS, client certificates)")
    print(f"  state         {state}\n")
    for proc in procs:
        print(f"  {proc.name:<24} pid {proc.pid:<8} log {proc.log_path}")
    print(
        f'\n  try: curl -s -H "Authorization: Bearer {login}" {server.base_url}/api/devices'
        " | python3 -m json.tool"
    )
    print("  Ctrl-C stops everything.\n", flush=True)


def _print_status(server: ServerProcess) -> None:
    status, page = server.get("/api/devices")
    if status != 200:
        print(f"API answered {status}", flush=True)
        return
    parts = [f"{d['id']}={d['state']}" for d in page["items"]]
    print(time.strftime("%H:%M:%S ") + "  ".join(parts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
