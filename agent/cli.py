"""camfleet-agent: the edge agent of a camera box. It loads its config and runs until
SIGTERM or SIGINT (systemd starts it as `camfleet-agent --config /etc/camfleet-agent/agent.toml`).

Exit codes (common.cli): 0 after a clean stop, 1 when the agent cannot start (TLS files,
state dir), 2 for a wrong command line or config file.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from agent.config import AgentSettings
from agent.errors import AgentError
from agent.service import run
from common.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, make_app, run_app
from common.logs import setup_logging
from common.settings import ConfigError, load_settings

log = logging.getLogger("agent")

PROG = "camfleet-agent"
EXIT_CONFIG = EXIT_USAGE

app = make_app(__doc__)


@app.command()
def agent(
    config: Annotated[Path, typer.Option("--config", help="the agent's TOML config file")],
) -> None:
    """Run the agent (camera, detection, MQTT link, heartbeats, updates) until SIGTERM or
    SIGINT. Exit codes: 0 after a clean stop, 1 when it cannot start (TLS files, state
    dir), 2 for a wrong command line or config file."""
    try:
        settings = load_settings(AgentSettings, config)
    except ConfigError as exc:
        fail(PROG, exc, EXIT_CONFIG)
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
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(EXIT_OK)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
