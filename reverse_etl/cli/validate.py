"""`retl validate`: every problem of every file, one pass, `file:line: field: message`."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    AllOption,
    JsonOption,
    ProjectDirOption,
    RoleOption,
    SelectOption,
    SyncsArgument,
    open_project,
    out,
    print_json,
    print_problems,
    selected_syncs,
)
from reverse_etl.errors import FailureReported
from reverse_etl.validate import validate_project


@app.command(rich_help_panel="Project")
def validate(
    syncs: SyncsArgument = None,
    select: SelectOption = None,
    all_syncs: AllOption = False,
    connect: Annotated[
        bool,
        typer.Option(
            "--connect",
            help="Also run the SQL with LIMIT 0 and check columns and destination fields.",
        ),
    ] = False,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            metavar="GIT_REF",
            help="Also warn about risky changes since this git ref (new deletes, raised limits).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Treat warnings (risky changes, scheduled syncs without alerts) as errors.",
        ),
    ] = False,
    role: RoleOption = None,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Check retl.yml and sync files: schema, references, mapping, mode rules, cron, secrets."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, syncs, select, all_syncs, require_valid=False)
    problems = validate_project(project, chosen, connect=connect, base=base, role=role)
    if strict:
        problems = [replace(p, severity="error") for p in problems]
    errors = [p for p in problems if p.severity == "error"]
    if json_output:
        print_json({"ok": not errors, "problems": [p.to_json() for p in problems]})
    else:
        print_problems(problems, out)
        if errors:
            note = " (--strict: warnings count as errors)" if strict else ""
            out.print(
                f"[red]{len(errors)} error(s)[/red] in {len({p.file for p in errors})} file(s)"
                + note
            )
        else:
            warnings = len(problems) - len(errors)
            note = f" ([yellow]{warnings} warning(s)[/yellow])" if warnings else ""
            out.print(f"[green]ok[/green]: retl.yml and {len(chosen)} sync(s) are valid{note}")
    if errors:
        raise FailureReported("validation found errors")
