"""A simulated fleet: thousands of devices, each with its own certificate, over mutual TLS
to one broker, from one process (asyncio, uvloop when installed).

Each device connects with its last will, says online, sends a heartbeat every interval
(QoS 1), and reconnects after a loss with the contract's backoff (first retry spread out,
then full jitter). The packets are built by the firmware's own MQTT packet code. It talks
only to the host given (127.0.0.1 in tests and benches) and stops by itself after
``--duration`` seconds. Stats (connected now, connects per second) go to a JSON file.

    python -m hil_tests.fleet_sim --creds DIR --port 8883 --duration 300 --stats stats.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import ssl
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.files import atomic_write
from firmware import contract
from firmware import mqtt_packet as mp

MAX_PACKET = 65536


@dataclass
class FleetStats:
    started: float = field(default_factory=time.time)
    connected: int = 0
    connects: Counter[int] = field(default_factory=Counter)  # unix second -> CONNACKs
    failures: int = 0
    heartbeats: int = 0
    acked: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "connects_total": sum(self.connects.values()),
            "connects_per_s": {str(k): v for k, v in sorted(self.connects.items())},
            "failures": self.failures,
            "heartbeats": self.heartbeats,
            "acked": self.acked,
        }


@dataclass(frozen=True)
class SimConfig:
    host: str
    port: int
    interval_s: float
    keepalive_s: int
    first_spread_s: float
    base_s: float
    cap_s: float
    connect_rate: float  # new connections per second at the first start


class Device:
    def __init__(self, device_id: str, ctx: ssl.SSLContext, cfg: SimConfig, stats: FleetStats,
                 rng: random.Random) -> None:  # fmt: skip
        self.id = device_id
        self.ctx = ctx
        self.cfg = cfg
        self.stats = stats
        self.rng = rng
        self.seq = 0
        self.pid = 0
        self.boot = time.time()

    def _next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def run(self, start_delay: float) -> None:
        await asyncio.sleep(start_delay)
        attempt = -1  # the first connection is paced by start_delay, not by backoff
        while True:
            try:
                await self._session()
                attempt = 0  # had a session: the next retry is the spread-out first one
            except (TimeoutError, OSError, mp.MQTTError, asyncio.IncompleteReadError):
                self.stats.failures += 1
                attempt = max(attempt, 0)
            delay = contract.reconnect_delay(attempt, self.rng.random(), self.cfg.base_s,
                                             self.cfg.cap_s, self.cfg.first_spread_s)  # fmt: skip
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        cfg = self.cfg
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port, ssl=self.ctx, server_hostname="localhost"),
            timeout=30,
        )
        connected = False
        try:
            ts = time.time()
            will_topic, will, _q, _r = contract.encode(
                "status", self.id, {"state": "offline", "kind": "agent"}, ts
            )
            writer.write(
                mp.connect_packet(self.id, cfg.keepalive_s, True, (will_topic, will, 1, True))
            )
            first, body = await self._read(reader)
            packet = mp.parse_packet(first, body)
            if packet[0] != mp.CONNACK or packet[2] != 0:
                raise mp.ConnectRefused(packet[2] if packet[0] == mp.CONNACK else -1)
            connected = True
            self.stats.connected += 1
            self.stats.connects[int(time.time())] += 1
            topic, online, _q, retain = contract.encode(
                "status", self.id, {"state": "online", "kind": "agent"}, ts
            )
            writer.write(mp.publish_packet(topic, online, 1, retain, self._next_pid()))
            self._connected(writer)
            pump = asyncio.create_task(self._pump(reader, writer))
            try:
                while not pump.done():
                    self._heartbeat(writer)
                    await writer.drain()
                    await asyncio.wait({pump}, timeout=cfg.interval_s)
                pump.result()
            finally:
                pump.cancel()
        finally:
            if connected:
                self.stats.connected -= 1
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    def _connected(self, writer: asyncio.StreamWriter) -> None:
        """Called once the online status is queued: a subclass subscribes here."""

    def _versions(self) -> dict[str, str]:
        return {"agent": "sim"}

    def _heartbeat(self, writer: asyncio.StreamWriter) -> None:
        body = {"seq": self.seq, "kind": "agent", "interval_s": self.cfg.interval_s,
                "uptime_s": round(time.time() - self.boot, 1), "cpu_pct": 12.0,
                "mem_used_pct": 40.0, "versions": self._versions()}  # fmt: skip
        topic, payload, qos, _r = contract.encode("heartbeat", self.id, body, time.time())
        writer.write(mp.publish_packet(topic, payload, qos, False, self._next_pid()))
        self.seq += 1
        self.stats.heartbeats += 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read acks (and what a subclass subscribed to) until the connection ends (raises
        then)."""
        while True:
            first, body = await self._read(reader)
            packet = mp.parse_packet(first, body)
            if packet[0] == mp.PUBACK:
                self.stats.acked += 1
            elif packet[0] == mp.PUBLISH:
                self._received(packet, writer)

    def _received(self, packet: tuple[Any, ...], writer: asyncio.StreamWriter) -> None:
        """A PUBLISH from the broker (a subclass subscribes in ``_connected``)."""

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readexactly(2)
        buf = bytearray(head)
        while buf[-1] & 0x80 and len(buf) < 5:
            buf += await reader.readexactly(1)
        parsed = mp.decode_remaining_length(buf, 1)
        if parsed is None:
            raise mp.RemoteProtocolError("bad remaining length")
        length, _start = parsed
        if length > MAX_PACKET:
            raise mp.PacketTooLarge(f"packet of {length} bytes")
        body = await reader.readexactly(length) if length else b""
        return buf[0], body


def load_devices(creds_dir: Path, root: Path) -> list[tuple[str, ssl.SSLContext]]:
    out = []
    for d in sorted(p for p in creds_dir.iterdir() if p.is_dir()):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(root))
        ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
        out.append((d.name, ctx))
    return out


async def drive(sims: Sequence[Device], stats: FleetStats, cfg: SimConfig, stats_path: Path,
                duration: float, every_s: float = 0.5) -> None:  # fmt: skip
    """Run ``sims`` (connects spread at ``cfg.connect_rate``) for ``duration`` seconds,
    writing ``stats`` to ``stats_path`` every ``every_s`` and once more at the end."""
    tasks = [asyncio.create_task(d.run(i / cfg.connect_rate)) for i, d in enumerate(sims)]
    until = time.monotonic() + duration
    try:
        while time.monotonic() < until:
            atomic_write(str(stats_path), json.dumps(stats.as_dict()).encode())
            await asyncio.sleep(every_s)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        atomic_write(str(stats_path), json.dumps(stats.as_dict()).encode())


async def run_fleet(devices: list[tuple[str, ssl.SSLContext]], cfg: SimConfig, stats_path: Path,
                    duration: float) -> FleetStats:  # fmt: skip
    stats = FleetStats()
    rng = random.Random(0x5EED)
    sims = [Device(dev_id, ctx, cfg, stats, rng) for dev_id, ctx in devices]
    await drive(sims, stats, cfg, stats_path, duration)
    return stats


def local_only(prog: str, host: str) -> bool:
    """A simulator talks only to this machine; says so when asked for another host."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return True
    print(f"{prog} talks only to this machine", file=sys.stderr)
    return False


def run_loop(fleet: Coroutine[Any, Any, object]) -> None:
    """Many sockets: the hard file limit, and uvloop where installed (it keeps TLS buffers
    small; plain asyncio holds 256 KiB per connection)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(fleet)
    else:
        uvloop.run(fleet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleet_sim", description=__doc__)
    p.add_argument("--creds", type=Path, required=True, help="one folder per device")
    p.add_argument("--root", type=Path, required=True, help="root CA certificate (PEM)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--first-spread", type=float, default=20.0)
    p.add_argument("--base", type=float, default=1.0)
    p.add_argument("--cap", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=500.0, help="first connects per second")
    p.add_argument("--duration", type=float, required=True, help="seconds, then stop")
    p.add_argument("--stats", type=Path, required=True)
    args = p.parse_args(argv)
    if not local_only("fleet_sim", args.host):
        return 2
    devices = load_devices(args.creds, args.root)
    cfg = SimConfig(args.host, args.port, args.interval, args.keepalive, args.first_spread,
                    args.base, args.cap, args.rate)  # fmt: skip
    run_loop(run_fleet(devices, cfg, args.stats, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
