"""`retl run`: execute plans, with a progress bar on a terminal and a summary table."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
from reverse_etl.cli.render import render_plan, render_summary
from reverse_etl.config import Sync
from reverse_etl.errors import FailureReported, UsageError
from reverse_etl.plan.model import Plan
from reverse_etl.run import Engine, RunOptions, RunOutcome
from reverse_etl.run.order import dependency_order
from reverse_etl.run.schedule import not_due_reason


@app.command(rich_help_panel="Syncs")
def run(
    syncs: SyncsArgument = None,
    select: SelectOption = None,
    all_syncs: AllOption = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --all: run every sync, due by its schedule or not."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and send nothing.")
    ] = False,
    full_resync: Annotated[
        bool,
        typer.Option("--full-resync", help="Ignore the stored state: every row counts as new."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting records.")
    ] = False,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Run syncs: send what changed since the last successful delivery, record what was accepted."""
    if not syncs and not select and not all_syncs:
        raise UsageError(
            "name the syncs to run, or use --all", "see `retl status` for the project's syncs"
        )
    project = open_project(project_dir)
    chosen = dependency_order(selected_syncs(project, syncs, select, all_syncs))
    engine = Engine(project, role=role)
    scheduled = all_syncs and not force and not syncs and not select
    outcomes: list[RunOutcome] = []
    succeeded: dict[str, bool] = {}
    for sync in chosen:
        reason = None
        if all_syncs and sync.config is not None and sync.config.paused:
            reason = "paused (set paused: false to run it)"
        elif scheduled:
            reason = not_due_reason(sync, engine.run_log, succeeded)
        if reason is not None:
            outcomes.append(RunOutcome(sync.name, "skipped", error=reason))
            continue
        outcome = _run_one(engine, sync, dry_run, full_resync, yes, json_output, scheduled)
        succeeded[sync.name] = outcome.status == "success"
        outcomes.append(outcome)
    if json_output:
        print_json({"runs": [o.to_json() for o in outcomes]})
    elif not dry_run:
        render_summary(err, outcomes)
    if any(o.status in ("failed", "refused") for o in outcomes):
        raise FailureReported("some syncs failed or were refused")


def _run_one(
    engine: Engine,
    sync: Sync,
    dry_run: bool,
    full_resync: bool,
    yes: bool,
    quiet: bool,
    scheduled: bool = False,
) -> RunOutcome:
    interactive = sys.stdin.isatty() and err.is_terminal

    def show_plan(plan: Plan) -> None:
        if dry_run and not quiet:
            render_plan(err, plan)

    def confirm(plan: Plan) -> bool:
        if yes or not interactive:
            return True
        render_plan(err, plan)
        return typer.confirm(
            f"Delete {plan.counts.delete:,} records from {plan.destination} {plan.object}?",
            default=False,
            err=True,
        )

    options = RunOptions(
        dry_run=dry_run,
        full_resync=full_resync,
        confirm=confirm,
        on_plan=show_plan,
        trigger="schedule" if scheduled else "manual",
    )
    if not err.is_terminal or quiet or dry_run:
        return engine.run(sync, options)
    # The bar starts with the first delivered batch, after any confirmation question.
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task(sync.name, total=None, start=False)

    def advance(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    options.on_progress = advance
    try:
        return engine.run(sync, options)
    finally:
        progress.stop()
