"""Simulated devices that take updates: the fleet simulator's devices (own certificates,
mutual TLS, heartbeats, last will), which also subscribe to their retained
``update/desired`` and answer a campaign the way an agent does: ``downloading``,
``installing``, ``trial``, then ``committed`` (and the new release in their heartbeats'
``versions``) or, for the devices told to fail, ``failed`` with an error. A device already
on the release answers ``committed`` again; an empty desired message (cleared) is ignored.

Stats go to a JSON file: which devices got a desired message (and for which release), and
how many committed or failed. Talks only to the host given; stops after ``--duration``.

    python -m hil_tests.update_sim --creds DIR --root ca.pem --port 8883 --duration 300 \
        --stats stats.json [--fail-ids a,b | --fail-rate 0.02] [--release 0.1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware import contract
from firmware import mqtt_packet as mp
from hil_tests.fleet_sim import (
    Device,
    FleetStats,
    SimConfig,
    drive,
    load_devices,
    local_only,
    run_loop,
)


@dataclass
class UpdateStats(FleetStats):
    desired: dict[str, list[str]] = field(default_factory=dict)  # device -> releases asked
    results: Counter[str] = field(default_factory=Counter)  # committed / failed
    first_ask: float | None = None
    last_result: float | None = None

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        out.update(desired=self.desired, results=dict(self.results), first_ask=self.first_ask,
                   last_result=self.last_result)  # fmt: skip
        return out


def fails_by_rate(device_id: str, rate: float) -> bool:
    """A fixed share of devices, chosen by a hash of the id (the same on every run)."""
    h = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big")
    return h < rate * 2**32


class UpdateDevice(Device):
    def __init__(self, device_id: str, ctx: ssl.SSLContext, cfg: SimConfig, stats: UpdateStats,
                 rng: random.Random, release: str, fail: bool, step_s: float) -> None:  # fmt: skip
        super().__init__(device_id, ctx, cfg, stats, rng)
        self.ustats = stats
        self.release = release
        self.fail = fail
        self.step_s = step_s
        self.busy: asyncio.Task[None] | None = None

    def _connected(self, writer: asyncio.StreamWriter) -> None:
        desired = contract.topic(self.id, "update_desired")
        writer.write(mp.subscribe_packet(self._next_pid(), desired, 1))

    def _versions(self) -> dict[str, str]:
        return {"agent": self.release}

    def _received(self, packet: tuple[Any, ...], writer: asyncio.StreamWriter) -> None:
        _kind, topic, payload, qos, _retain, _dup, pid = packet
        if qos:
            writer.write(mp.puback_packet(pid))
        if payload:
            self._desired(topic, bytes(payload), writer)

    def _desired(self, topic: str, payload: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            _dev, _kind, want = contract.decode(topic, payload)
        except contract.ProtocolError:
            self.stats.failures += 1
            return
        release = str(want["release"])
        self.ustats.desired.setdefault(self.id, []).append(release)
        if self.ustats.first_ask is None:
            self.ustats.first_ask = time.time()
        if self.busy is not None and not self.busy.done():
            return  # an install is under way
        self.busy = asyncio.create_task(self._install(want, writer))

    def _report(self, writer: asyncio.StreamWriter, want: dict[str, Any], state: str,
                **extra: object) -> None:  # fmt: skip
        body = {
            "campaign": want["campaign"],
            "artifact": want["artifact"],
            "release": want["release"],
            "state": state,
            "running": self.release,
            **extra,
        }
        topic, payload, qos, _r = contract.encode("update_state", self.id, body, time.time())
        writer.write(mp.publish_packet(topic, payload, qos, False, self._next_pid()))

    async def _install(self, want: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        release = str(want["release"])
        if release == self.release:
            self._report(writer, want, "committed")
            return
        for state, extra in (("downloading", {"progress": 50.0}), ("installing", {}),
                             ("trial", {"attempt": 1})):  # fmt: skip
            self._report(writer, want, state, **extra)
            await asyncio.sleep(self.step_s * self.rng.uniform(0.5, 1.5))
        if self.fail:
            self._report(writer, want, "failed", error="bad_hash: injected failure")
            self.ustats.results["failed"] += 1
        else:
            self.release = release
            self._report(writer, want, "committed")
            self._heartbeat(writer)  # the next heartbeat already says the new release
            self.ustats.results["committed"] += 1
        self.ustats.last_result = time.time()
        await writer.drain()


async def run_update_fleet(
    devices: list[tuple[str, ssl.SSLContext]], cfg: SimConfig, stats_path: Path, duration: float,
    release: str, failing: set[str], step_s: float,
) -> UpdateStats:  # fmt: skip
    stats = UpdateStats()
    rng = random.Random(0x5EED)
    sims = [UpdateDevice(dev_id, ctx, cfg, stats, rng, release, dev_id in failing, step_s)
            for dev_id, ctx in devices]  # fmt: skip
    await drive(sims, stats, cfg, stats_path, duration, every_s=1.0)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="update_sim", description=__doc__)
    p.add_argument("--creds", type=Path, required=True, help="one folder per device")
    p.add_argument("--root", type=Path, required=True, help="root CA certificate (PEM)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, s")
    p.add_argument("--rate", type=float, default=500.0, help="first connects per second")
    p.add_argument("--release", default="0.1.0", help="the release every device runs first")
    p.add_argument("--fail-ids", default="", help="comma-separated devices whose install fails")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of devices that fail")
    p.add_argument("--step", type=float, default=0.1, help="seconds between install steps")
    p.add_argument("--duration", type=float, required=True, help="seconds, then stop")
    p.add_argument("--stats", type=Path, required=True)
    args = p.parse_args(argv)
    if not local_only("update_sim", args.host):
        return 2
    devices = load_devices(args.creds, args.root)
    failing = {d for d in args.fail_ids.split(",") if d}
    failing |= {d for d, _c in devices if args.fail_rate and fails_by_rate(d, args.fail_rate)}
    cfg = SimConfig(args.host, args.port, args.interval, 60, 20.0, 1.0, 60.0, args.rate)
    run_loop(run_update_fleet(devices, cfg, args.stats, args.duration, args.release, failing,
                              args.step))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
