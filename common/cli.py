"""One style for camfleet's three command-line tools (typer with rich output).

``camfleet-server``, ``camfleet-agent`` and ``camfleet-provision`` share it: help texts that
say what each command does, errors on standard error as ``<tool>: <message>`` in red, and
the same exit codes everywhere:

- 0: done (PASS for the technician's checks);
- 1: the command ran and failed (the message says what to check);
- 2: a wrong command line or a wrong config file: nothing was done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

err = Console(stderr=True, highlight=False, soft_wrap=True)  # a message is one line


def fail(prog: str, message: object, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``prog: message`` to standard error and end the command with ``code``."""
    err.print(f"[bold red]{escape(prog)}[/]: {escape(str(message))}")
    raise typer.Exit(code)


def make_app(doc: str | None) -> typer.Typer:
    """A typer app in the house style: help from the module docstring (Markdown, so its
    indented usage lines stay as they are), no shell-completion options."""
    return typer.Typer(
        add_completion=False, no_args_is_help=True, rich_markup_mode="markdown", help=doc
    )


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog: str) -> int:
    """Run a typer app as ``main(argv)`` does: the exit code is returned, never raised,
    so tests and the console script share one entry."""
    try:
        code = app(args=list(argv) if argv is not None else None, prog_name=prog,
                   standalone_mode=False)  # fmt: skip
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return EXIT_FAILED
    except typer.TyperException as exc:  # usage errors: the message, and code 2
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    return code if isinstance(code, int) else EXIT_OK
