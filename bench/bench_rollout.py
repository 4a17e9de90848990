"""A rollout to 10,000 simulated devices through a canary and waves, 2 % injected failures.

Each device has its own certificate (mutual TLS to one Mosquitto), heartbeats every 10 s,
and installs what its retained update/desired asks (hil_tests.update_sim); a fixed 2 % of
the devices (by a hash of their id) fail every install. Two campaigns on the real server:

1. waves 1 %, 10 %, 50 %, 100 %, success threshold 95 %, failure threshold 5 %: 2 % failures
   are within the thresholds, so it must proceed to the end ("finished");
2. the next release with a canary of 5 % (at least 500) that tolerates no failure: 2 %
   breaks it, so it must halt after the canary, and no device outside the canary may be
   asked.

Figure: ``rollout_devices_per_min``, devices that went through campaign 1 (committed or
failed) per minute from its creation to its end. CAMFLEET_SIM_DEVICES sets the fleet size.
Everything talks to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_fleet import read_stats, sim_credentials
from bench.results import Figure
from hil_tests.procs import Broker, Process, RigError, wait_for
from hil_tests.server import ServerProcess

INTERVAL_S = 10.0
FAIL_RATE = 0.02


def _campaign(name: str, release: str, waves: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body = {"name": name, "artifact": "agent", "release": release,
            "target": f"agent/camfleet-agent-{release}.tar.gz", "waves": waves,
            "success_threshold": 0.95, "failure_threshold": 0.05, "soak_s": 5.0,
            "rate_per_min": 60_000, "device_deadline_s": 300.0}  # fmt: skip
    body.update(kw)
    return body


def _wait_state(server: ServerProcess, cid: str, states: tuple[str, ...], timeout: float) -> str:
    seen = {"state": ""}

    def done() -> bool:
        status, body = server.get(f"/api/rollouts/{cid}")
        seen["state"] = body.get("state", "") if status == 200 else ""
        return seen["state"] in states

    wait_for(done, timeout, interval=1.0, what=f"campaign {cid} {' or '.join(states)}")
    return seen["state"]


def run(work: Path) -> list[Figure]:
    ca, creds, n, _issue_s = sim_credentials(work)
    broker = Broker(ca, work / "broker").start()
    # offline after 6 missed heartbeats: a simulator starved of CPU is not a failed update
    server = ServerProcess(work / "server", ca.dir, broker.port, grace=6.0,
                           extra={"rollouts": {"tick_s": 2.0}})  # fmt: skip
    operator = server.add_user("bench-op", "operator")
    server.start_and_wait()
    stats = work / "sim.json"
    sim = Process(
        "update-sim",
        [sys.executable, "-m", "hil_tests.update_sim", "--creds", str(creds), "--root",
         str(ca.root_cert_path), "--port", str(broker.port), "--interval", str(INTERVAL_S),
         "--rate", "300", "--fail-rate", str(FAIL_RATE), "--step", "0.5",
         "--release", "0.1.0", "--duration", "900", "--stats", str(stats)],
        work / "sim.log",
    ).start()  # fmt: skip
    try:
        # every device known, nearly all online (on a busy machine a few reconnect late;
        # the retained desired message waits for them)
        wait_for(lambda: server.get("/api/devices?limit=1")[1]["total"] >= n
                 and server.get("/api/devices?state=online&limit=1")[1]["total"] >= 0.99 * n,
                 600, interval=2.0, what=f"{n} devices known, 99 % online")  # fmt: skip
        # 1: thresholds that 2 % failures pass
        t0 = time.monotonic()
        status, made = server.post(
            "/api/rollouts",
            _campaign("bench-proceed", "0.2.0",
                      [{"percent": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}]),
            token=operator,
        )  # fmt: skip
        if status != 201:
            raise RigError(f"campaign refused: {status} {made}")
        cid = made["campaign"]["id"]
        first = _wait_state(server, cid, ("finished", "halted"), 600)
        took_s = time.monotonic() - t0
        camp = server.get(f"/api/rollouts/{cid}")[1]
        if first != "finished":
            raise RigError(f"campaign 1 should proceed with 2 % failures, it {first}: "
                           f"{camp['reason']}")  # fmt: skip
        wait_for(lambda: server.get(f"/api/rollouts/{cid}")[1]["closed_at"] is not None, 60,
                 interval=1.0, what="campaign 1 closed")  # fmt: skip
        counts = camp["counts"]
        went = counts["committed"] + counts["failed"] + counts["rolled_back"]

        # 2: a canary that tolerates no failure; 2 % breaks it (5 %, at least 500 devices:
        # with a fixed 2 % failing, a canary of 500 holds none of them with odds 0.98^500)
        canary_n = max(n // 20, min(n, 500))
        status, made2 = server.post(
            "/api/rollouts",
            _campaign("bench-halt", "0.3.0", [{"count": canary_n, "failure_threshold": 0.0},
                                               {"percent": 100}]),
            token=operator,
        )  # fmt: skip
        if status != 201:
            raise RigError(f"campaign refused: {status} {made2}")
        cid2 = made2["campaign"]["id"]
        second = _wait_state(server, cid2, ("halted", "finished"), 300)
        camp2 = server.get(f"/api/rollouts/{cid2}")[1]
        canary = set(made2["plan"]["devices"][: made2["plan"]["wave_sizes"][0]])
        time.sleep(3.0)  # a few engine ticks after the halt
        asked = {d for d, rels in read_stats(stats).get("desired", {}).items() if "0.3.0" in rels}
    finally:
        sim.stop()
        server.stop()
        broker.stop()
    if second != "halted":
        raise RigError(f"campaign 2 should halt on its canary, it {second}")
    if not asked <= canary:
        raise RigError(f"{len(asked - canary)} devices outside the canary were asked")
    per_min = went / took_s * 60.0
    waves = ", ".join(f"{w['size']}" for w in camp["waves"])
    return [
        Figure(
            "rollout_devices_per_min", per_min, "devices/min", "rate limit 60,000/min",
            f"{went} of {n} devices through waves of {waves} in {took_s:.0f} s "
            f"({counts['failed']} injected failures, 2 %; 5 s soak each; proceeded as its "
            f"95 %/5 % thresholds say); a canary of {len(canary)} with no failure allowed halted "
            f"({camp2['counts']['failed']} failed of {len(canary)}), no device outside it "
            f"asked",
        ),
    ]  # fmt: skip
