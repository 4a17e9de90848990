"""Devices for the receipt scenarios (issue 14): one process running the agent's real link
stack (``Outbox`` on disk, ``Link`` over paho with TLS, ``Sender``) for each of N devices,
each adding numbered events at a steady rate and sending heartbeats with its outbox
counters. Its stats file (written atomically twice a second) says what every device
produced, refused and still holds; ``tally`` compares that with the server's database,
event by event.

    python -m hil_tests.receipts_load --creds DIR --port N --state DIR --stats FILE \\
        --rate 5 --duration 60 [--receipt-timeout 2] [--drain 60]

SIGTERM ends production at once and drains; SIGKILL is a power cut (the outboxes stay).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import text

from agent.config import MqttSettings
from agent.errors import OutboxError
from agent.link.mqtt import Link
from agent.link.outbox import Outbox
from agent.link.sender import Sender
from common.files import atomic_write
from fleet_server.db import make_engine

log = logging.getLogger("receipts_load")


class Stack:
    def __init__(self, device_id: str, creds: Path, port: int, state: Path, args: Any) -> None:
        self.id = device_id
        state.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(state / f"{device_id}.sqlite", device_id, 64 << 20, 1_000_000)
        self.link = Link(device_id, MqttSettings(
            host="localhost", port=port, ca=creds / "root.pem", cert=creds / "cert.pem",
            key=creds / "key.pem", keepalive_s=5, reconnect_base_s=args.reconnect_base,
            reconnect_cap_s=args.reconnect_cap, reconnect_first_spread_s=args.first_spread,
        ))  # fmt: skip
        self.sender = Sender(self.outbox, self.link, 50, receipt_timeout_s=args.receipt_timeout,
                             receipt_timeout_cap_s=args.receipt_timeout_cap)  # fmt: skip
        self.produced = 0
        self.refused_calls = 0
        self.beat = 0

    def start(self) -> None:
        self.link.start()
        self.sender.start()

    def produce(self, n: int) -> None:
        try:
            if self.outbox.add("test.tick", {"n": n}, time.time()) is not None:
                self.produced += 1
        except OutboxError:
            self.refused_calls += 1
        self.sender.kick()

    def heartbeat(self) -> None:
        body: dict[str, object] = {
            "seq": self.beat, "kind": "agent", "interval_s": 1, "uptime_s": float(self.beat),
            "outbox": self.outbox.depth(), "outbox_unreceipted": self.outbox.unreceipted(),
            "outbox_refused": self.outbox.refused(),
            "outbox_dropped": self.outbox.dropped().total,
        }  # fmt: skip
        if self.link.publish("heartbeat", body):
            self.beat += 1

    def stats(self) -> dict[str, Any]:
        return {
            "epoch": self.outbox.epoch, "produced": self.produced,
            "next_seq": self.outbox.next_seq(), "depth": self.outbox.depth(),
            "unreceipted": self.outbox.unreceipted(), "refused": self.outbox.refused(),
            "resends": self.sender.resends, "bad_receipts": self.sender.bad_receipts,
            "receipted": self.sender.receipted, "connects": self.link.connects,
        }  # fmt: skip

    def close(self) -> None:
        self.sender.stop()
        self.link.close(timeout=3)
        self.outbox.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="receipts_load")
    p.add_argument("--creds", type=Path, required=True, help="one folder per device")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", type=Path, required=True, help="outbox files")
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--rate", type=float, default=5.0, help="events per second per device")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--drain", type=float, default=60.0, help="most seconds to empty outboxes")
    p.add_argument("--receipt-timeout", type=float, default=2.0)
    p.add_argument("--receipt-timeout-cap", type=float, default=8.0)
    p.add_argument("--reconnect-base", type=float, default=0.5)
    p.add_argument("--reconnect-cap", type=float, default=5.0)
    p.add_argument("--first-spread", type=float, default=1.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stacks = [Stack(d.name, d, args.port, args.state, args)
              for d in sorted(args.creds.iterdir()) if (d / "cert.pem").exists()]  # fmt: skip
    stop = threading.Event()

    def on_term(_s: int, _f: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    for s in stacks:
        s.start()

    def write(phase: str) -> None:
        data = {"phase": phase, "at": time.time(), "devices": {s.id: s.stats() for s in stacks}}
        atomic_write(args.stats, json.dumps(data).encode())

    start = time.monotonic()
    n = 0
    next_beat = next_write = 0.0
    while not stop.is_set() and time.monotonic() - start < args.duration:
        for s in stacks:
            s.produce(n)
        n += 1
        now = time.monotonic()
        if now >= next_beat:
            for s in stacks:
                s.heartbeat()
            next_beat = now + 1.0
        if now >= next_write:
            write("producing")
            next_write = now + 0.5
        stop.wait(max(0.0, start + n / args.rate - time.monotonic()))
    _drain(stacks, args.drain, write)
    return 0


def _drain(stacks: list[Stack], most_s: float, write: Callable[[str], None]) -> None:
    """Until every outbox is empty (all receipted) or ``most_s``; heartbeats go on."""
    write("draining")
    until = time.monotonic() + most_s
    next_beat = 0.0
    while time.monotonic() < until and any(s.outbox.depth() for s in stacks):
        beat = time.monotonic() >= next_beat
        for s in stacks:
            s.sender.kick()
            if beat:
                s.heartbeat()
        if beat:
            next_beat = time.monotonic() + 1.0
        time.sleep(0.2)
        write("draining")
    for s in stacks:
        s.heartbeat()  # the last counters reach the server
    time.sleep(0.5)
    write("done")
    for s in stacks:
        s.close()


# ---------------------------------------------------------------- the count


@dataclass(frozen=True)
class Tally:
    sent: int  # events the devices produced (stored in their outboxes)
    stored: int  # distinct events of those in the server's database
    lost: int  # produced, not stored
    duplicated: int  # rows beyond one per event id or per (device, epoch, seq)
    unexpected: int  # stored events no device produced
    server_lost: int  # the server's own loss count (event_streams.lost)
    refused: int  # events the devices refused at the source (disk full)
    server_refused: int  # what the server last heard of those (heartbeats)


def tally(stats_file: Path, database_url: str) -> Tally:
    """What the devices produced against what the database holds, event by event."""
    stats = json.loads(stats_file.read_text())["devices"]
    want: set[str] = set()
    for dev, s in stats.items():
        want |= {f"{dev}-{s['epoch']}-{i}" for i in range(int(s["next_seq"]))}
    engine = make_engine(database_url)
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT event_id, device_id, seq, data FROM events")).all()
            streams = db.execute(
                text("SELECT coalesce(sum(lost), 0), coalesce(sum(refused), 0) FROM event_streams")
            ).one()
    finally:
        engine.dispose()
    ids = [str(r[0]) for r in rows if str(r[1]) in stats]
    seqs = [(str(r[1]), int(r[2])) for r in rows if str(r[1]) in stats]
    got = set(ids)
    dup = max(len(ids) - len(got), len(seqs) - len(set(seqs)))
    return Tally(
        sent=len(want), stored=len(got & want), lost=len(want - got), duplicated=dup,
        unexpected=len(got - want), server_lost=int(streams[0]),
        refused=sum(int(s["refused"]) for s in stats.values()), server_refused=int(streams[1]),
    )  # fmt: skip


def outbox_rows(state: Path) -> int:
    """Rows left in every outbox file of ``state`` (read from the files themselves)."""
    total = 0
    for f in state.glob("*.sqlite"):
        with sqlite3.connect(f) as db:
            total += int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    return total


if __name__ == "__main__":
    raise SystemExit(main())
