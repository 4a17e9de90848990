"""The kill test hook of the updater (see agent.ota.updater): ``CAMFLEET_OTA_CRASH_AT=
<point>:<marker file>`` SIGKILLs the agent once at ``point``; ``CAMFLEET_OTA_POWER_CUT=1``
kills the whole process group instead (the launcher too)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

CRASH_ENV = "CAMFLEET_OTA_CRASH_AT"


def crash_point(point: str) -> None:
    """SIGKILL this process once at ``point`` when the hook names it."""
    spec = os.environ.get(CRASH_ENV, "")
    name, _, marker = spec.partition(":")
    if name != point or not marker or os.path.exists(marker):
        return
    Path(marker).write_text(point)
    log.warning("test hook: SIGKILL at %s", point)
    if os.environ.get("CAMFLEET_OTA_POWER_CUT") == "1":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
