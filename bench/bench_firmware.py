"""The node firmware's heap: the smallest ``-X heapsize`` its whole scenario runs in.

The scenario is the one the tests walk through, on the real unix-port MicroPython against
the real TLS Mosquitto (pairing ACL on): boot and join, apply a desired config, answer
commands (good and bad), power-cycle a silent box, keep events through a broker outage
long enough to overflow the ring, reset by the watchdog on a hung I2C bus, reboot on
command. It passes when every step is seen from the outside and the node's log has no
MemoryError. A bisection over the heap size (2 KiB steps) finds the smallest heap it
passes in: the firmware's peak heap need, compared with the 128 KiB the tests give it.

A second figure: the smallest heap for boot to the first heartbeat (import, TLS connect,
subscribe, heartbeat) from source versus from the .mpy build: compiling on the device
costs that much more RAM. Note: on the unix port mbedTLS allocates outside the
MicroPython heap, so neither figure includes a TLS session (on a board it is in the heap).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.results import Figure
from firmware import contract
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from hil_tests.node import NodeProcess, node_process
from hil_tests.procs import Broker
from tests.mqtt_helpers import Client
from tests.node_helpers import SessionObserver, bodies, events

NODE, BOX = "node-bench", "box-bench"
TARGET_KB = 128
STEP_KB = 2


class ScenarioFailed(Exception):
    pass


def _wait(node: NodeProcess, what: str, cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "MemoryError" in node.log_text():
            raise ScenarioFailed(f"MemoryError before {what}")
        if cond():
            return
        time.sleep(0.05)
    raise ScenarioFailed(f"timed out waiting for {what}")


def _pki(work: Path) -> tuple[CertificateAuthority, DeviceCredentials, DeviceCredentials]:
    ca = CertificateAuthority(work / "pki")
    ca.init()
    return ca, ca.issue_device(NODE, work / NODE), ca.issue_device(BOX, work / BOX)


def _broker(ca: CertificateAuthority, work: Path, port: int | None = None) -> Broker:
    return Broker(ca, work / "broker", port=port, pairs={NODE: BOX}).start()


@contextlib.contextmanager
def _node(
    creds: DeviceCredentials, port: int, work: Path, heap_kb: int, source: bool, **extra: object
) -> Iterator[NodeProcess]:
    sim = work / "sim"
    sim.mkdir(parents=True)
    for name, text in {"temp_c": "24", "humidity_pct": "40", "pin_door": "0"}.items():
        (sim / name).write_text(text)
    node = node_process(
        creds,
        port,
        work,
        heartbeat_s=1,
        sim_dir=sim,
        source=source,
        heap=f"{heap_kb}k",
        extra={"sensor_s": 0.25, "ring_slots": 8, "watchdog_ms": 2000, **extra},
    )
    node.start()
    try:
        yield node
    finally:
        node.kill()


def _cmd(obs: Client, cid: str, cmd: str, args: dict[str, object] | None = None) -> None:
    body: dict[str, object] = {"cid": cid, "cmd": cmd}
    if args is not None:
        body["args"] = args
    topic, data, _q, _r = contract.encode("cmd_req", NODE, body, time.time())
    obs.publish(topic, data)


def _has(obs: Client, kind: str, pred: Callable[[dict[str, object]], bool]) -> bool:
    return any(pred(b) for b in bodies(obs, NODE, kind))


def scenario(work: Path, heap_kb: int) -> float:
    """The whole scenario at one heap size; returns the lowest mem_free a heartbeat showed
    (KiB). ScenarioFailed when a step is not seen or the node ran out of memory."""
    ca, node_creds, box_creds = _pki(work)
    broker = _broker(ca, work)
    port = broker.port
    obs = SessionObserver(ca, port, NODE, "bench-observer")
    box = Client(port, box_creds.root_pem, box_creds.cert_pem, box_creds.key_pem, BOX)
    try:
        with _node(node_creds, port, work / "node", heap_kb, False) as node:
            sim = work / "node" / "sim"
            _wait(node, "online", lambda: _has(obs, "status", lambda b: b["state"] == "online"))
            desired = {"box_id": BOX, "box_deadline_s": 2, "box_off_s": 0.5, "box_boot_s": 1}
            desired["box_max_cycles"] = 1
            data = contract.encode(
                "config_desired", NODE, {"version": 1, "config": desired}, time.time()
            )
            obs.publish(data[0], data[1], retain=True)
            _wait(node, "config", lambda: _has(obs, "config_reported", lambda b: bool(b["ok"])))
            requests: list[tuple[str, str, dict[str, object] | None]] = [
                ("c1", "ping", None),
                ("c2", "read_sensors", None),
                ("c3", "relay", {"action": "cycle", "off_s": 0.5}),
                ("c4", "relay", {"action": "explode"}),
            ]
            for cid, cmd, args in requests:
                _cmd(obs, cid, cmd, args)
            _wait(node, "answers", lambda: len(bodies(obs, NODE, "cmd_res")) == 4)
            _wait(node, "box subscription", lambda: "watching box" in node.log_text())
            for seq in range(4):
                body = {"seq": seq, "kind": "agent", "interval_s": 1, "uptime_s": 1.0}
                box.publish(*contract.encode("heartbeat", BOX, body, time.time())[:2])
                time.sleep(0.3)
            _wait(
                node,
                "power cycle",
                lambda: any(e["data"].get("by") == "supervisor" for e in events(obs, NODE)),
            )
            broker.stop()
            for i in range(12):
                (sim / "pin_door").write_text("1" if i % 2 == 0 else "0")
                time.sleep(0.6)
            broker = _broker(ca, work, port)
            _wait(node, "drop report", lambda: bool(events(obs, NODE, "buffer.dropped")), 30)
            _wait(node, "buffered events", lambda: events(obs, NODE)[-1]["seq"] >= 14, 30)
            (sim / "i2c_hang").write_text("")
            _wait(node, "watchdog reset", lambda: _has(obs, "heartbeat", _reset("wdt")), 30)
            _cmd(obs, "c5", "reboot")
            _wait(node, "reboot", lambda: _has(obs, "heartbeat", _reset("soft")), 30)
            if node.boots != 3:
                raise ScenarioFailed(f"{node.boots} boots, expected 3")
            return min(int(b["mem_free"]) for b in bodies(obs, NODE, "heartbeat")) / 1024
    finally:
        box.close()
        obs.close()
        broker.stop()


def _reset(cause: str) -> Callable[[dict[str, object]], bool]:
    return lambda b: b.get("reset_cause") == cause


def boot(work: Path, heap_kb: int, source: bool) -> float:
    """Boot to the first heartbeat at one heap size (no scenario)."""
    ca, node_creds, _box = _pki(work)
    broker = _broker(ca, work)
    obs = SessionObserver(ca, broker.port, NODE, "bench-observer")
    try:
        with _node(node_creds, broker.port, work / "node", heap_kb, source) as node:
            _wait(node, "first heartbeat", lambda: bool(bodies(obs, NODE, "heartbeat")), 15)
            if not node.alive():
                raise ScenarioFailed("node exited")
            return 0.0
    finally:
        obs.close()
        broker.stop()


def smallest_heap(
    work: Path, lo: int, hi: int, attempt: Callable[[Path, int], object], check_hi: bool = True
) -> int:
    """Smallest heap (KiB, STEP_KB resolution) in (lo, hi] at which ``attempt`` passes;
    ``hi`` must pass (checked first unless the caller has just seen it pass)."""
    runs = 0

    def passes(kb: int) -> bool:
        nonlocal runs
        runs += 1
        try:
            attempt(work / f"run-{runs}-{kb}k", kb)
            return True
        except ScenarioFailed as exc:
            print(f"   {kb} KiB: {exc}", flush=True)
            return False

    if check_hi and not passes(hi):
        raise ScenarioFailed(f"does not pass with {hi} KiB")
    while hi - lo > STEP_KB:
        mid = (lo + hi) // 2 // STEP_KB * STEP_KB
        if mid <= lo:
            break
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def run(work: Path) -> list[Figure]:
    low_free = scenario(work / "full-128k", TARGET_KB)
    peak = smallest_heap(work / "scenario", 32, TARGET_KB, scenario, check_hi=False)
    mpy_boot = smallest_heap(work / "boot-mpy", 32, TARGET_KB, lambda w, kb: boot(w, kb, False))
    src_boot = smallest_heap(work / "boot-src", 64, 512, lambda w, kb: boot(w, kb, True))
    return [
        Figure(
            "firmware_heap_peak_kb",
            float(peak),
            "KiB",
            f"the {TARGET_KB} KiB heap the tests give it (ratio {peak / TARGET_KB:.2f})",
            "smallest -X heapsize the whole node scenario passes in (.mpy build, unix port,"
            f" 64-bit); at {TARGET_KB} KiB its heartbeats' lowest mem_free was"
            f" {low_free:.0f} KiB; mbedTLS is outside this heap on the unix port",
        ),
        Figure(
            "firmware_boot_heap_source_over_mpy",
            src_boot / mpy_boot,
            "ratio",
            ".mpy build of the same firmware (mpy-cross)",
            f"smallest heap to boot, connect and send a heartbeat: {src_boot} KiB from source,"
            f" {mpy_boot} KiB from .mpy",
        ),
    ]
