"""Moves the outbox to the server: publishes waiting rows in order with a bounded window of
unacknowledged messages; a PUBACK marks a row sent, the server's receipt deletes it.

Acks and receipts come on paho's thread; they only go into queues, and this thread applies
them (no lock is shared with paho, whose own lock is held while it calls back). Rows are sent
again from the oldest:

- after every reconnect (a message whose PUBACK or receipt was lost arrives twice; the
  server stores each event id once and receipts it again);
- when a row the broker acknowledged has had no receipt for ``receipt_timeout_s`` (the
  broker dropped it: a shared group without member, a restart, an overflowing queue).
  Each such round without any receipt in between doubles the wait, up to
  ``receipt_timeout_cap_s``, so that a server that is down for an hour is not flooded when
  it returns; a receipt brings the wait back to ``receipt_timeout_s``.

Times are monotonic: a jump of the wall clock neither hastens nor delays a resend.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.errors import OutboxError
from agent.link.mqtt import Link
from agent.link.outbox import Outbox
from firmware import contract

log = logging.getLogger(__name__)

_IDLE_S = 0.1


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        window: int,
        on_acked: Callable[[list[int]], None] | None = None,
        *,
        receipt_timeout_s: float = 10.0,
        receipt_timeout_cap_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_receipted: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.window = window
        self.on_acked = on_acked
        self.on_receipted = on_receipted  # row ids a receipt deleted (benchmarks)
        self.receipt_timeout_s = receipt_timeout_s
        self.receipt_timeout_cap_s = max(receipt_timeout_cap_s, receipt_timeout_s)
        self._clock = clock
        self._acks: queue.SimpleQueue[tuple[int, int, bool]] = queue.SimpleQueue()
        self._receipts: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = -1
        self._inflight: dict[int, int] = {}  # mid -> row id
        self._last_sent = 0  # highest row id handed to paho in this round
        self._waiting: OrderedDict[int, float] = OrderedDict()  # row id -> PUBACK time
        self._timeout = receipt_timeout_s
        self.sent = 0
        self.acked = 0  # rows the broker acknowledged
        self.receipted = 0  # rows deleted on a receipt
        self.refused = 0  # rows the broker refused (PUBACK reason code)
        self.bad_receipts = 0  # receipts refused whole (forged, malformed, other stream)
        self.resends = 0  # rounds started again because a receipt did not come
        link.on_published = self._on_published
        link.on_receipt = self._on_receipt

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def kick(self) -> None:
        """Something was added to the outbox."""
        self._wake.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_published(self, generation: int, mid: int, ok: bool) -> None:  # paho's thread
        self._acks.put((generation, mid, ok))
        self._wake.set()

    def _on_receipt(self, body: dict[str, Any]) -> None:  # paho's thread
        self._receipts.put(body)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except OutboxError as exc:  # a full or failing disk: try again in a second,
                log.error("%s", exc)  # sending everything not receipted again
                self._rewind()
                self._stop.wait(1.0)
            self._wake.wait(_IDLE_S)
            self._wake.clear()

    def step(self) -> None:
        """One round: take acks and receipts, resend what timed out, fill the window
        (public for a test that drives it)."""
        generation = self.link.generation
        if generation != self._generation:
            self._generation = generation
            self._inflight.clear()
            self._rewind()
        self._take_acks()
        self._take_receipts()
        self._check_timeout()
        if not self.link.is_connected():
            return
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.pending(self._last_sent, room):
            sent = self.link.publish_raw(row.topic, row.payload, 1, False)
            if sent is None:
                return
            gen, mid = sent
            if gen != self._generation:
                return  # reconnected meanwhile: the next round starts over
            self._inflight[mid] = row.id
            self._last_sent = row.id
            self.sent += 1

    def _rewind(self) -> None:
        """Send everything left again, from the oldest row."""
        self._last_sent = 0
        self._waiting.clear()

    def _check_timeout(self) -> None:
        if not self._waiting:
            return
        oldest = next(iter(self._waiting.values()))
        if self._clock() - oldest < self._timeout:
            return
        log.warning("no receipt for %d sent events within %.0fs: sending again from the oldest",
                    len(self._waiting), self._timeout)  # fmt: skip
        self.resends += 1
        self._timeout = min(self._timeout * 2, self.receipt_timeout_cap_s)
        self._rewind()

    def _take_acks(self) -> None:
        done: list[int] = []
        refused: list[int] = []
        while True:
            try:
                generation, mid, ok = self._acks.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation:
                continue  # from a connection that is gone; its rows are sent again
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                continue
            if not ok:
                self.refused += 1
                log.error("broker refused outbox row %d; dropped", row_id)
                refused.append(row_id)
            else:
                done.append(row_id)
        if refused:
            self.outbox.ack(refused)
        if done:
            now = self._clock()
            # not marked (a full disk: OutboxError): their receipts would delete nothing;
            # _run then sends everything again from the oldest and the PUBACKs mark them
            for row_id in self.outbox.mark_sent(done):
                self._waiting.pop(row_id, None)  # sent again: its wait starts anew
                self._waiting[row_id] = now
            self.acked += len(done)
            if self.on_acked is not None:
                self.on_acked(done)

    def _take_receipts(self) -> None:
        while True:
            try:
                body = self._receipts.get_nowait()
            except queue.Empty:
                return
            try:
                ranges = contract.receipt_ranges(body, self.outbox.epoch, self.outbox.next_seq())
            except contract.ProtocolError as exc:
                self.bad_receipts += 1
                log.warning("receipt refused: %s", exc)
                continue
            gone = self.outbox.receipt(ranges)
            for row_id in gone:
                self._waiting.pop(row_id, None)
            if gone:
                self.receipted += len(gone)
                self._timeout = self.receipt_timeout_s
                if self.on_receipted is not None:
                    self.on_receipted(gone)
