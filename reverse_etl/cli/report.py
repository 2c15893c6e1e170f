"""`retl report [--out report.html]`: one static HTML file with each sync's runs over time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import JsonOption, ProjectDirOption, open_project, print_json
from reverse_etl.project.report import DEFAULT_REPORT, write_report


@app.command(rich_help_panel="Operations")
def report(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"Where to write the page (default: {DEFAULT_REPORT} in the project root).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Write a static HTML report: per sync, charts of sent, rejected, duration, state size."""
    project = open_project(project_dir)
    path = write_report(project, out)
    if json_output:
        print_json({"report": str(path.resolve())})
        return
    typer.echo(str(path.resolve()))
