"""make demo's runner brings the whole fleet up and stops every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from hil_tests import demo_province
from hil_tests.procs import REPO, free_port, wait_for


def _events(api: str, token: str) -> int:
    url = f"{api}/api/events?device_id=cam-demo-01&type=track.new&limit=1"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read())["total"])


def _states(api: str, token: str) -> list[str]:
    url = f"{api}/api/devices?limit=1000"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return [str(d["state"]) for d in json.loads(resp.read())["items"]]


def test_demo_brings_the_fleet_up_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hil_tests.demo",
            "--state-dir",
            str(tmp_path / "state"),
            "--broker-port",
            str(free_port()),
            "--api-port",
            str(free_port()),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:  # bounded: the demo gives up after 60 s by itself
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        api = re.search(r"REST API\s+(http://\S+)/api/devices", "".join(lines))
        login = re.search(r"sign in with: (\S+)\)", "".join(lines))
        assert api and login, "".join(lines)
        # the detecting agent runs the real model on its street scene: tracks reach the server
        wait_for(
            lambda: _events(api.group(1), login.group(1)) > 0, 90, interval=1.0,
            what="detection events",
        )  # fmt: skip
        # the province: sites around Bắc Ninh, simulated devices online, some offline
        wait_for(lambda: _states(api.group(1), login.group(1)).count("online") >= 30, 60,
                 interval=1.0, what="simulated devices online")  # fmt: skip
        states = _states(api.group(1), login.group(1))
        assert len(states) == 3 + len(demo_province.SIMULATED) + 8
        assert states.count("offline") == len(demo_province.OFFLINE)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "camfleet demo is running" in out
    assert "REST API" in out
    for name in ("cam-demo-01", "cam-demo-02", "node-demo-01", "mosquitto", "fleet-server"):
        assert name in out
    assert "stopped." in out
    # every process the demo listed is gone
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 6  # mosquitto, fleet server, two agents, one node, the simulator
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"pid {pid} survived the demo"
