"""``camfleet-agent --config agent.toml``: load the config, run until SIGTERM/SIGINT.

Exit codes: 0 after a clean stop, 1 when the agent cannot start (TLS files, state dir),
2 for a wrong command line or config file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.config import AgentSettings
from agent.errors import AgentError
from agent.service import run
from common.logs import setup_logging
from common.settings import ConfigError, load_settings

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camfleet-agent", description="camfleet edge agent")
    p.add_argument("--config", type=Path, required=True, help="agent TOML config file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(AgentSettings, args.config)
    except ConfigError as exc:
        print(f"camfleet-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run(settings, stop)
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
