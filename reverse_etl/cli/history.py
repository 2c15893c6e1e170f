"""`retl history SYNC`: the git log of the files that decide what a sync sends."""

from __future__ import annotations

from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    open_project,
    out,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.render import Column, print_rows
from reverse_etl.git import file_history


@app.command(rich_help_panel="Operations")
def history(
    sync: Annotated[str, typer.Argument(help="The sync.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many commits.")] = 20,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """The sync file's git log: its version notes."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    commits = file_history(chosen.files, limit=limit)
    if json_output:
        print_json({"sync": chosen.name, "commits": [c.__dict__ for c in commits]})
        return
    if not commits:
        out.print(f"{chosen.file} has no git history (not committed, or not in a git repository)")
        return
    print_rows(
        out,
        [
            Column("commit"),
            Column("date"),
            Column("author", wrap=True),
            Column("message", wrap=True),
        ],
        [[c.commit[:12], str(c.date), c.author, c.message] for c in commits],
    )
