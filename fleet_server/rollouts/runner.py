"""The thread that ticks open campaigns in the server process and publishes what the
engine decided, after each campaign's transaction commits."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleet_server.commands.store import Outgoing
from fleet_server.rollouts import model as m
from fleet_server.rollouts import store, tick
from fleet_server.rollouts.settings import RolloutSettings

log = logging.getLogger(__name__)

Send = Callable[[Outgoing], None]
Announce = Callable[[bytes], None]  # a campaign event for the alerts topic


def tick_all(
    sessions: sessionmaker[Session], send: Send, now: float, default_tz: str,
    announce: Announce | None = None, max_out: int = 500,
) -> list[dict[str, Any]]:  # fmt: skip
    """One pass over the open campaigns; each in its own transaction. Returns the events."""
    with sessions() as db:
        ids = store.open_campaigns(db)
    events: list[dict[str, Any]] = []
    for cid in ids:
        try:
            with sessions.begin() as db:
                camp = store.lock_campaign(db, cid)
                if camp.closed_at is not None:
                    continue  # another worker closed it a moment ago
                res = tick.tick_campaign(db, camp, now, default_tz, max_out)
        except Exception:  # one campaign's trouble must not stop the others
            log.exception("rollout tick of campaign %s failed", cid)
            continue
        for out in res.out:
            send(out)
        for ev in res.events:
            level = logging.WARNING if ev["state"] == m.HALTED else logging.INFO
            log.log(level, "campaign %s %s: %s", ev["campaign"], ev["event"], ev["message"])
            if announce is not None and ev["event"] in (m.HALTED, m.FINISHED):
                announce(json.dumps(ev).encode())
        events += res.events
    return events


class RolloutRunner(threading.Thread):
    def __init__(
        self, sessions: sessionmaker[Session], send: Send, settings: RolloutSettings,
        announce: Callable[[], Announce | None] = lambda: None,
    ) -> None:  # fmt: skip
        super().__init__(name="rollouts", daemon=True)
        self.sessions = sessions
        self.send = send
        self.settings = settings
        self.announce = announce
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.tick_s):
            try:
                tick_all(self.sessions, self.send, time.time(), self.settings.default_timezone,
                         self.announce(), self.settings.max_publish_per_tick)  # fmt: skip
            except Exception:  # a DB hiccup must not end the rollouts
                log.exception("rollout tick failed")
