"""The command line: parses arguments, calls the engine, renders with rich or --json.

Exit codes are decided here and nowhere else: 0 success, a `RetlError`'s own `exit_code`
(1 failure, 2 usage or an unreadable project), 2 for the parser's usage errors, 130 on Ctrl-C.
With `--json` every failure is also one JSON document on stdout:
`{"ok": false, "error": {"type": ..., "message": ..., "hint": ...}}`. With `--log-format json`
(any command, see cli/logs.py) stderr carries only JSON lines: a failure is an `error` event.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from rich.markup import escape
from typer import Abort
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer._click.exceptions import UsageError as ParserUsageError

from reverse_etl import interrupt
from reverse_etl.cli import logs
from reverse_etl.cli.app import COMMAND_MODULES, app
from reverse_etl.config import Problem
from reverse_etl.errors import ConfigError, FailureReported, RetlError

USAGE_EXIT = 2
INTERRUPTED_EXIT = 130


def _register_commands(args: list[str]) -> None:
    """Import the modules whose commands `args` may run: only the named command's when the line
    starts with a command name (a quicker start, `retl validate` loads no engine), else all
    (help, --version, a mistyped name that gets a "did you mean")."""
    module = COMMAND_MODULES.get(args[0]) if args else None
    if module is None:
        from reverse_etl.cli import commands  # noqa: F401 - registers every command on `app`
    else:
        importlib.import_module(f"reverse_etl.cli.{module}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `retl` console script: one-screen errors, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = invoke(args, as_json="--json" in args)
    # Done and reported. Python restores the default handlers while it shuts down, so a signal
    # arriving now would kill the process (exit -2) after a complete run: ignore it instead.
    interrupt.ignore_from_now_on()
    sys.exit(code)


def invoke(args: list[str], *, as_json: bool) -> int:
    """Run one command line and return its exit code; every failure is rendered here."""
    interrupt.install()  # first: a signal while the commands load is reported, not a traceback
    try:
        log_format, args = logs.take_log_format(args)
    except RetlError as exc:
        _print_error(exc, annotate=False)
        return USAGE_EXIT
    if log_format == "json":
        with logs.json_stderr():
            return _invoke(args, as_json=as_json)
    return _invoke(args, as_json=as_json)


def _invoke(args: list[str], *, as_json: bool) -> int:
    try:
        _register_commands(args)
        code = app(args=args, prog_name="retl", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except NoArgsIsHelpError as exc:  # `retl state`: the help on stderr, as a usage error
        if logs.json_logs():
            command = exc.ctx.command_path if exc.ctx is not None else "retl"
            _log_error("usage", "missing command", f"see `{command} --help`", USAGE_EXIT)
        else:
            exc.show()
        if as_json:
            command = exc.ctx.command_path if exc.ctx is not None else "retl"
            _print_json_error(
                {"type": "usage", "message": "missing command", "hint": f"see `{command} --help`"}
            )
        return USAGE_EXIT
    except ParserUsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "retl"
        hint = f"see `{command} --help`"
        return _fail(as_json, "usage", exc.format_message(), hint, USAGE_EXIT, exc)
    except ClickException as exc:
        return _fail(as_json, "usage", exc.format_message(), None, exc.exit_code)
    except Abort:
        return _fail(as_json, "aborted", "aborted", None, 1)
    except FailureReported as exc:
        return exc.exit_code
    except RetlError as exc:
        if as_json:
            _print_json_error(exc.to_json())
        if logs.json_logs():
            logs.write_event(
                logs.cli_event("error", "error", **exc.to_json(), exit_code=exc.exit_code)
            )
        else:
            _print_error(exc, annotate=not as_json)
        return exc.exit_code
    except interrupt.RunInterrupted as exc:
        message = f"interrupted by {exc}: nothing more was sent"
        return _fail(as_json, "interrupted", message, None, exc.exit_code)
    except KeyboardInterrupt:
        message = "interrupted: nothing more was sent"
        return _fail(as_json, "interrupted", message, None, INTERRUPTED_EXIT)
    except Exception as exc:  # a bug: keep it to one screen unless asked for the traceback
        signum = interrupt.requested()
        if signum is not None:  # a signal that a library turned into its own error (DuckDB's
            # "Query interrupted"): an interruption, not a bug
            stopped = interrupt.RunInterrupted(signum)
            message = f"interrupted by {stopped}: nothing more was sent"
            return _fail(as_json, "interrupted", message, None, stopped.exit_code)
        if os.environ.get("RETL_DEBUG"):
            raise
        hint = "this is a bug in retl; rerun with RETL_DEBUG=1 for the traceback and report it"
        message = f"{exc.__class__.__name__}: {exc}"
        if as_json:
            _print_json_error({"type": "internal", "message": message, "hint": hint})
        if logs.json_logs():
            _log_error("internal", message, hint, 1)
            return 1
        from reverse_etl.cli.common import err

        err.print(f"[red]internal error:[/red] {escape(message)}", highlight=False)
        err.print(f"    hint: {hint}", style="dim", markup=False)
        return 1


def _fail(
    as_json: bool,
    kind: str,
    message: str,
    hint: str | None,
    code: int,
    parser_error: ParserUsageError | None = None,
) -> int:
    if as_json:
        _print_json_error({"type": kind, "message": message, "hint": hint})
    if logs.json_logs():
        _log_error(kind, message, hint, code)
    elif parser_error is not None:
        parser_error.show()  # the parser's own "Usage: ... Error: ..." on stderr
    else:
        from reverse_etl.cli.common import err

        err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return code


def _log_error(kind: str, message: str, hint: str | None, code: int) -> None:
    logs.write_event(
        logs.cli_event("error", "error", type=kind, message=message, hint=hint, exit_code=code)
    )


def _print_json_error(error: dict[str, Any]) -> None:
    from reverse_etl.cli.common import print_json

    print_json({"ok": False, "error": error})


def _print_error(exc: RetlError, *, annotate: bool) -> None:
    from reverse_etl.cli.common import err, print_problems

    if isinstance(exc, ConfigError):
        problems = [p for p in exc.problems if isinstance(p, Problem)]
        if problems:
            print_problems(problems, annotate=annotate)
    err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err.print(f"    hint: {exc.hint}", style="dim", markup=False)


__all__ = ["app", "invoke", "main"]
