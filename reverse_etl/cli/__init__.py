"""The command line: parses arguments, calls the engine, renders with rich or --json."""

from __future__ import annotations

import os
import sys

from rich.markup import escape

from reverse_etl.cli.app import app
from reverse_etl.config import Problem
from reverse_etl.errors import ConfigError, RetlError


def _register_commands() -> None:
    from reverse_etl.cli import commands  # noqa: F401 - registers every command on `app`


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `retl` console script: one-screen errors, never a traceback."""
    from reverse_etl.cli.common import err, print_problems
    from reverse_etl.run import interrupt

    _register_commands()
    interrupt.install()
    try:
        app(args=argv, prog_name="retl")
    except ConfigError as exc:
        problems = [p for p in exc.problems if isinstance(p, Problem)]
        if problems:
            print_problems(problems)
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        sys.exit(exc.exit_code)
    except RetlError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, markup=True)
        if exc.hint:
            err.print(f"    hint: {exc.hint}", style="dim", markup=False)
        sys.exit(exc.exit_code)
    except interrupt.RunInterrupted as exc:
        err.print(f"[yellow]interrupted by {exc}[/yellow]: nothing more was sent")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: nothing more was sent")
        sys.exit(130)
    except Exception as exc:  # a bug: keep it to one screen unless asked for the traceback
        if os.environ.get("RETL_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/red] {exc.__class__.__name__}: {escape(str(exc))}",
            markup=True,
            highlight=False,
        )
        err.print(
            "    hint: this is a bug in retl; rerun with RETL_DEBUG=1 for the traceback and report it",
            style="dim",
        )
        sys.exit(1)


__all__ = ["app", "main"]
