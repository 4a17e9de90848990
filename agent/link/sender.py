"""Moves the outbox to the broker: publishes waiting rows in order with a bounded window of
unacknowledged messages, and deletes a row only when its PUBACK arrives.

Acks come on paho's thread; they only go into a queue, and this thread matches them to
rows (no lock is shared with paho, whose own lock is held while it calls back). After a
reconnect every row not yet acknowledged is sent again from the oldest: a message whose
PUBACK was lost arrives twice and the server de-duplicates it by its event id.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from agent.errors import OutboxError
from agent.link.mqtt import Link
from agent.link.outbox import Outbox

log = logging.getLogger(__name__)

_IDLE_S = 0.1


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        window: int,
        on_acked: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.window = window
        self.on_acked = on_acked
        self._acks: queue.SimpleQueue[tuple[int, int, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = -1
        self._inflight: dict[int, int] = {}  # mid -> row id
        self._last_sent = 0  # highest row id handed to paho on this connection
        self.sent = 0
        self.acked = 0
        self.refused = 0
        link.on_published = self._on_published

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

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except OutboxError as exc:
                log.error("%s", exc)
                self._stop.wait(1.0)
            self._wake.wait(_IDLE_S)
            self._wake.clear()

    def step(self) -> None:
        """One round: take acks, then fill the window (public for a test that drives it)."""
        generation = self.link.generation
        if generation != self._generation:
            self._generation = generation
            self._inflight.clear()
            self._last_sent = 0
        self._take_acks()
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

    def _take_acks(self) -> None:
        done: list[int] = []
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
            done.append(row_id)
        if done:
            self.acked += self.outbox.ack(done)
            if self.on_acked is not None:
                self.on_acked(done)
