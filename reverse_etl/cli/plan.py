"""`retl plan` and `retl preview`: read-only views of what a run would do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    AllOption,
    JsonOption,
    ProjectDirOption,
    RoleOption,
    SelectOption,
    SyncsArgument,
    err,
    open_project,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.render import render_plan, render_preview
from reverse_etl.errors import FailureReported, RetlError, UsageError


@app.command(rich_help_panel="Syncs")
def plan(
    syncs: SyncsArgument = None,
    select: SelectOption = None,
    all_syncs: AllOption = False,
    full_resync: Annotated[
        bool, typer.Option("--full-resync", help="Plan as if nothing had been delivered.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Also save the plan to this file, for `retl run --plan FILE` to apply."
        ),
    ] = None,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Show what a run would create, update and delete, counts first, then samples. Writes nothing."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, syncs, select, all_syncs)
    from reverse_etl.plan.files import save_plans
    from reverse_etl.run import Engine

    engine = Engine(project, role=role)
    documents = []
    plans = []
    failed = False
    for sync in chosen:
        try:
            result = engine.plan(sync, full_resync=full_resync)
        except RetlError as exc:
            failed = True
            err.print(f"[red]{sync.name}[/red]: {escape(exc.message)}", highlight=False)
            if exc.hint:
                err.print(f"    hint: {exc.hint}", style="dim", markup=False)
            documents.append({"name": sync.name, "error": exc.message})
            continue
        plans.append(result)
        documents.append(result.to_json())
        if not json_output:
            render_plan(err, result)
    document = {"syncs": documents}
    if out is not None:
        if failed:
            err.print(f"no plan file written: a sync could not be planned ({out} unchanged)")
        else:
            save_plans(out, plans)
            err.print(f"plan saved to {out}; apply it with `retl run --plan {out}`", style="dim")
    if json_output:
        print_json(document)
    if failed:
        raise FailureReported("some syncs could not be planned")


@app.command(rich_help_panel="Syncs")
def preview(
    sync: Annotated[str, typer.Argument(help="The sync to preview.")],
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="How many records to show.")
    ] = 10,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Run the sync's SQL: row count, null/duplicate key counts and the first records as sent."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False)
    if len(chosen) != 1:
        raise UsageError(f"preview takes one sync; '{sync}' matches {len(chosen)}")
    from reverse_etl.plan.preview import preview_sync

    result = preview_sync(project, chosen[0], limit=limit, role=role)
    if json_output:
        print_json(result.to_json())
    else:
        render_preview(err, result)
