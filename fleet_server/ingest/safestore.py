"""Storing a batch so that one message can never stop the others.

``SafeStore.apply`` stores a batch through the registry. When that fails:

- the database is away or busy (a connection error, a lock, a deadlock): the batch is kept
  and tried again, with backoff, for as long as it takes; the messages are not at fault
  and nothing is acknowledged, so the broker keeps them;
- anything else (a constraint, a value the database will not take, a bug in a rule that
  one payload trips), or the same "busy" error five times while the database answers:
  a message is at fault. The batch is stored again in halves, then quarters, … until each
  message that fails on its own stands alone; those are set aside as dead letters
  (``deadletter.py``) and acknowledged with the rest. None is ever tried again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fleet_server.ingest import gate
from fleet_server.ingest.deadletter import payload_text, store_dead_letters
from fleet_server.ingest.registry import Accepted, ApplyStats, Registry
from fleet_server.metrics import Metrics

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, PoolTimeout)
DEAD_LETTER = "dead_letter"  # the reason in the (rate-limited) log line of a dead letter
BATCH_FAILED = "batch_failed"  # the same for a batch that failed (looking for the culprit)
BUSY_TRIES = 5  # a "busy" error this many times while the DB answers: a message is at fault


class _DatabaseAway(Exception):
    pass


def merge(into: ApplyStats, more: ApplyStats) -> None:
    for f in dataclasses.fields(ApplyStats):
        setattr(into, f.name, getattr(into, f.name) + getattr(more, f.name))


class SafeStore:
    def __init__(self, registry: Registry, metrics: Metrics, stop: threading.Event) -> None:
        self.registry = registry
        self.metrics = metrics
        self.stop = stop
        self.dead_letters = 0  # set aside since the start
        # dead letters are logged like refusals: the first of a device at once, then one
        # summary per interval (a device whose every message fails to store cannot fill the
        # disk through the log); the runner shares its own limiter
        self.refusal_log = gate.RefusalLog()

    def database_answers(self) -> bool:
        try:
            with self.registry.sessions() as db:
                db.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means "not now"
            return False
        return True

    def apply(self, batch: Sequence[Accepted]) -> tuple[ApplyStats, list[int]] | None:
        """Store ``batch``; (stats, indexes of the messages set aside), or None when the
        server stops before it could (nothing acknowledged: the broker keeps them)."""
        delay = 0.2
        busy = 0
        while True:
            try:
                with self.metrics.batch_seconds.time():
                    return self.registry.apply(batch), []
            except Exception as exc:  # noqa: BLE001 - sorted out below
                self.metrics.store_errors.inc()
                if isinstance(exc, TRANSIENT):
                    busy += 1
                    if busy < BUSY_TRIES or not self.database_answers():
                        log.warning("storing a batch of %d failed (%s); retrying in %.1fs",
                                    len(batch), type(exc).__name__, delay)  # fmt: skip
                        if self.stop.wait(delay):
                            return None
                        delay = min(delay * 2, 10.0)
                        continue
                # rate-limited too: a device can make one batch fail per message it sends
                why = f"a batch of {len(batch)} failed ({type(exc).__name__}: {str(exc)[:200]})"
                self.refusal_log.note(gate.Refused(BATCH_FAILED, "*", why), len(batch))
            try:
                return self._isolate(batch)
            except _DatabaseAway:
                if self.stop.wait(delay):
                    return None
                delay = min(delay * 2, 10.0)
                busy = 0

    def _isolate(self, batch: Sequence[Accepted]) -> tuple[ApplyStats, list[int]]:
        """Halve until every failing message stands alone; set those aside. Parts stored
        before the database went away stay stored: their repeat is recognised as such."""
        stats = ApplyStats()
        poison: list[tuple[int, Exception]] = []
        todo: list[list[int]] = [list(range(len(batch)))]
        while todo:
            part = todo.pop()
            try:
                merge(stats, self.registry.apply([batch[i] for i in part]))
            except Exception as exc:
                if not self.database_answers():
                    raise _DatabaseAway from exc
                if len(part) == 1:
                    poison.append((part[0], exc))
                else:
                    mid = len(part) // 2
                    todo.append(part[mid:])
                    todo.append(part[:mid])
        if poison:
            self._set_aside([(batch[i], exc) for i, exc in poison])
        return stats, [i for i, _exc in poison]

    def _set_aside(self, bad: list[tuple[Accepted, Exception]]) -> None:
        now = time.time()
        rows = [
            {"device_id": m.device_id, "kind": m.kind, "received_at": m.received_at,
             "failed_at": now, "error": f"{type(exc).__name__}: {exc}"[:1024],
             "payload": payload_text(m.raw, m.body)}
            for m, exc in bad
        ]  # fmt: skip
        try:
            with self.registry.sessions.begin() as db:
                store_dead_letters(db, rows)
        except Exception as failed:
            raise _DatabaseAway from failed
        self.dead_letters += len(rows)
        self.metrics.dead_letters.inc(len(rows))
        for row in rows:
            detail = f"{row['kind']}: {str(row['error'])[:200]}"
            self.refusal_log.note(gate.Refused(DEAD_LETTER, str(row["device_id"]), detail),
                                  len(str(row["payload"])))  # fmt: skip
