"""Receipts out: after a batch is committed, one message per device (per 64 ranges) naming
the sequence numbers of its events the database now holds. Events that repeat one already
stored are receipted too: the device sent it again because no receipt reached it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from firmware import contract, receipts
from fleet_server.receipts.store import Message

log = logging.getLogger(__name__)

# (topic, payload, qos, retain)
Publish = Callable[[str, bytes, int, bool], None]


def plan(batch: Sequence[Message]) -> dict[tuple[str, str], list[int]]:
    """(device, epoch) -> sequence numbers of the batch's events that carry an epoch."""
    out: dict[tuple[str, str], list[int]] = {}
    for m in batch:
        if m.kind != "event":
            continue
        epoch = m.body.get("epoch")
        if isinstance(epoch, str):
            out.setdefault((m.device_id, epoch), []).append(int(m.body["seq"]))
    return out


def messages(batch: Sequence[Message], ts: float) -> list[tuple[str, bytes]]:
    """(topic, payload) of every receipt the batch calls for."""
    out: list[tuple[str, bytes]] = []
    for (device_id, epoch), seqs in plan(batch).items():
        for body in receipts.receipt_bodies(epoch, seqs):
            topic, payload, _q, _r = contract.encode("receipt", device_id, body, ts)
            out.append((topic, payload))
    return out
