"""The `retl` Typer application: commands are registered from their own modules."""

from __future__ import annotations

from typing import Annotated

import typer
from typer._click import Context
from typer.core import TyperOption

from reverse_etl import __version__


def _flag_aware_type(self: TyperOption, ctx: Context) -> str | None:
    """Help shows no value type for a flag: typer 0.29 labels every flag `<bool>`, as if
    `--json` took a value."""
    if self.is_flag:
        return None
    return _typed(self, ctx)


_typed = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_aware_type  # type: ignore[method-assign]

# The module of reverse_etl.cli that registers each command, so that a command line naming one
# loads only that module (cli/__init__.py); tests/cli/test_startup.py checks it against `app`.
COMMAND_MODULES: dict[str, str] = {
    "init": "init",
    "validate": "validate",
    "destinations": "catalog",
    "clone": "catalog",
    "plan": "plan",
    "preview": "plan",
    "run": "run",
    "status": "status",
    "pause": "pause",
    "resume": "pause",
    "runs": "runs",
    "dlq": "dlq",
    "unlock": "state",
    "state": "state",
    "history": "history",
    "report": "report",
}

app = typer.Typer(
    name="retl",
    help="Declarative Reverse ETL: sync warehouse rows into databases, files and APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"retl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="text, or json: one JSON object per event on stderr and nothing else (for "
            "cron). Any command takes it, anywhere on the line; env RETL_LOG_FORMAT.",
            show_default=False,
        ),
    ] = "text",
) -> None:
    """Declarative Reverse ETL: sync warehouse rows into databases, files and APIs."""
    # `invoke` takes --log-format out of the command line first (cli/logs.py): it is declared
    # here so that `retl --help` shows it.
