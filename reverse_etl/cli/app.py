"""The `retl` Typer application: commands are registered from their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from reverse_etl import __version__

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
) -> None:
    """Declarative Reverse ETL: sync warehouse rows into databases, files and APIs."""
