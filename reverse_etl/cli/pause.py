"""`retl pause SYNC --reason TEXT` and `retl resume SYNC`: an operational pause for incidents,
recorded in state (who, when, why) on top of `paused:` in the sync file."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    open_engine,
    open_project,
    out,
    print_json,
)


@app.command(rich_help_panel="Operations")
def pause(
    sync: Annotated[str, typer.Argument(help="The sync to pause.", show_default=False)],
    reason: Annotated[
        str,
        typer.Option(
            "--reason", "-r", help="Why (shown by run, plan and status).", show_default=False
        ),
    ],
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Who pauses it (default: git user.name <user.email>, else $USER).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Pause a sync during an incident: `run`, `run --all` and `plan` honour it until `retl resume`."""
    engine = open_engine(open_project(project_dir))
    paused = engine.pause(sync, reason, by)
    if json_output:
        print_json({"sync": sync, "paused": True, "pause": paused.to_dict()})
        return
    out.print(f"[yellow]{escape(sync)}[/yellow]: {escape(paused.describe())}", highlight=False)
    out.print(f"    resume with `retl resume {sync}`", style="dim", markup=False)


@app.command(rich_help_panel="Operations")
def resume(
    sync: Annotated[str, typer.Argument(help="The sync to resume.", show_default=False)],
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Lift the pause `retl pause` set (a `paused: true` in the sync file stays)."""
    engine = open_engine(open_project(project_dir))
    lifted = engine.resume(sync)
    config = engine.sync(sync).config
    still = bool(config and config.paused)
    if json_output:
        print_json(
            {
                "sync": sync,
                "resumed": lifted is not None,
                "pause": lifted.to_dict() if lifted else None,
                "paused_in_file": still,
            }
        )
        return
    if lifted is None:
        out.print(f"{escape(sync)} was not paused with `retl pause`", highlight=False)
    else:
        out.print(
            f"[green]{escape(sync)}[/green]: resumed (was {escape(lifted.describe())})",
            highlight=False,
        )
    if still:
        out.print(
            "    note: `paused: true` in its sync file still pauses it",
            style="yellow",
            markup=False,
        )
