"""The retention loop in the server process (not in ingest workers): every
``retention_every_s`` it deletes what is past each site's retention."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.privacy.settings import PrivacySettings
from fleet_server.privacy.subject_api import run_retention

log = logging.getLogger(__name__)


class RetentionRunner(threading.Thread):
    def __init__(self, sessions: sessionmaker[Session], settings: PrivacySettings) -> None:
        super().__init__(name="privacy-retention", daemon=True)
        self.sessions = sessions
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                deleted = run_retention(self.sessions, self.settings, time.time())
                for site, n in sorted(deleted.items()):
                    log.info("retention: %d events of site %s deleted", n, site)
            except SQLAlchemyError:  # a DB hiccup must not end the loop
                log.exception("retention failed; next try in %.0fs",
                              self.settings.retention_every_s)  # fmt: skip
            if self.stopped.wait(self.settings.retention_every_s):
                return
