"""Supervised threads: a thread of the server that dies is started again, or the process
ends with a non-zero status so that systemd starts it again (issue 15).

The ingest's MQTT thread and DB writer, the deadline monitor and the rollout runner are
long-lived loops. Each catches what it expects; anything else would end its thread while
the process, and ``/healthz``, carried on as if nothing happened. The ``Supervisor`` looks
at each watched thread every ``every_s``: a dead one is started again (counted in
``camfleet_ingest_thread_restarts_total{thread}``, logged); more than ``max_restarts``
restarts of one thread within ``window_s`` means it dies of something that stays, and the
process ends (``on_fatal``: SIGTERM to itself, so it stores and acknowledges what it holds,
and exit status 70; if it has not ended 30 s later, it is ended at once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

from fleet_server.metrics import Metrics

log = logging.getLogger(__name__)

EXIT_THREAD_DIED = 70  # EX_SOFTWARE: systemd's Restart=on-failure starts the process again
_fatal = threading.Event()


def fatal_happened() -> bool:
    """Whether a supervisor gave up in this process (the CLI's exit status)."""
    return _fatal.is_set()


def exit_process(why: str) -> None:
    """Ask this process to end (SIGTERM, handled as a normal stop) with a non-zero status;
    end it at once if it has not ended in 30 s."""
    log.critical("ending the process: %s", why)
    _fatal.set()

    def last_resort() -> None:
        time.sleep(30)
        os._exit(EXIT_THREAD_DIED)

    threading.Thread(target=last_resort, name="fatal-exit", daemon=True).start()
    os.kill(os.getpid(), signal.SIGTERM)


class Watched:
    """One supervised loop: ``target`` runs in a thread; ``alive``/``restart`` for the
    supervisor. ``thread`` may be one already started (a ``Thread`` subclass's own)."""

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        thread: threading.Thread | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """With ``alive``, ``target`` is what starts the loop again (an object that owns
        its thread); else ``target`` is the loop itself, run in a new thread."""
        self.name = name
        self.target = target
        self.thread = thread
        self._alive = alive
        self.restarts: deque[float] = deque()

    def alive(self) -> bool:
        if self._alive is not None:
            return self._alive()
        return self.thread is not None and self.thread.is_alive()

    def restart(self) -> None:
        if self._alive is not None:
            self.target()
            return
        self.thread = threading.Thread(target=self.target, name=self.name, daemon=True)
        self.thread.start()


class Supervisor(threading.Thread):
    def __init__(
        self,
        metrics: Metrics,
        every_s: float = 1.0,
        max_restarts: int = 5,
        window_s: float = 60.0,
        on_fatal: Callable[[str], None] = exit_process,
    ) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.metrics = metrics
        self.every_s = every_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.on_fatal = on_fatal
        self.stopped = threading.Event()
        self.watched: list[Watched] = []
        self.ticks: list[Callable[[], object]] = []  # also run every ``every_s``
        self.gave_up: str | None = None

    def watch(self, watched: Watched) -> Watched:
        self.watched.append(watched)
        return watched

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.check()
            for tick in self.ticks:
                try:
                    tick()
                except Exception:
                    log.exception("supervisor tick failed")

    def check(self) -> None:
        """Restart what died; give up on a thread that dies too often."""
        if self.gave_up is not None:
            return
        now = time.monotonic()
        for w in self.watched:
            if self.stopped.is_set() or w.alive():
                continue
            while w.restarts and now - w.restarts[0] > self.window_s:
                w.restarts.popleft()
            if len(w.restarts) >= self.max_restarts:
                self.gave_up = (
                    f"thread {w.name} died {len(w.restarts) + 1} times in {self.window_s:.0f}s"
                )
                self.on_fatal(self.gave_up)
                return
            w.restarts.append(now)
            self.metrics.thread_restarts.labels(thread=w.name).inc()
            log.error("thread %s died; starting it again", w.name)
            try:
                w.restart()
            except Exception as exc:  # noqa: BLE001 - a restart that fails is fatal
                self.gave_up = f"thread {w.name} could not be started again: {exc}"
                self.on_fatal(self.gave_up)
                return
