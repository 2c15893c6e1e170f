"""`retl run`: execute plans, with a progress bar on a terminal, a plain progress line every few
seconds off one (a CI log is never silent), and a summary table; with `--log-format json`,
the run's events instead (run/events.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from reverse_etl import interrupt
from reverse_etl.cli import logs
from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    AllOption,
    JsonOption,
    ProjectDirOption,
    RoleOption,
    SelectOption,
    SyncsArgument,
    err,
    open_engine,
    open_project,
    out,
    print_json,
    print_warning,
    selected_syncs,
)
from reverse_etl.cli.render import plan_banners, render_plan, render_summary, render_unplanned
from reverse_etl.errors import FailureReported, RunInterruptedReported, UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from reverse_etl.plan.model import Plan
    from reverse_etl.run import RunEvent, RunOutcome

# Off a terminal, a running sync prints a progress line at most this often (seconds).
PROGRESS_INTERVAL_S = 5.0
PROGRESS_INTERVAL_ENV = "RETL_PROGRESS_INTERVAL"


@app.command(rich_help_panel="Syncs")
def run(
    syncs: SyncsArgument = None,
    select: SelectOption = None,
    all_syncs: AllOption = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --all: run every sync, due by its schedule or not (a failed dependency still skips).",
        ),
    ] = False,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="Apply exactly this saved plan (from `retl plan --out`), or refuse when it is stale.",
        ),
    ] = None,
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
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            max=64,
            help="Run up to N syncs at once (each after the syncs it runs after:); default 1.",
        ),
    ] = 1,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Run syncs: send what changed since the last successful delivery, record what was accepted."""
    if plan_file is not None and (syncs or select or all_syncs or full_resync):
        raise UsageError(
            "--plan applies the syncs of the plan file: name no sync and no --all/--full-resync",
            "retl run --plan plan.json",
        )
    if plan_file is None and not syncs and not select and not all_syncs:
        raise UsageError(
            "name the syncs to run, or use --all", "see `retl status` for the project's syncs"
        )
    project = open_project(project_dir)
    from reverse_etl.plan.files import load_plans
    from reverse_etl.run import RunOptions

    engine = open_engine(project, role=role)
    lost = engine.lost_run_log()  # before this run writes a new run log
    if lost is not None:
        print_warning(*lost)
    scheduled = all_syncs and not syncs and not select
    display = _Display(dry_run=dry_run, yes=yes, quiet=json_output)
    options = RunOptions(
        dry_run=dry_run,
        full_resync=full_resync,
        force=force,
        trigger="schedule" if scheduled else "manual",
        confirm=display.confirm,
        on_plan=display.show_plan,
        on_event=display.event,
    )
    outcomes: list[RunOutcome] = []
    if plan_file is not None:
        for saved in load_plans(plan_file):
            outcome = engine.run_plan(saved, options)
            display.done(outcome)
            outcomes.append(outcome)
            if outcome.status == "interrupted":
                break
    else:
        # With --all a broken sync file fails that sync (and what waits on it), not the others.
        chosen = selected_syncs(project, syncs, select, all_syncs, require_valid=not scheduled)
        outcomes = engine.run_many(
            chosen, options, scheduled=scheduled, on_outcome=display.done, threads=threads
        )
    if json_output:
        print_json({"runs": [o.to_json() for o in outcomes]})
    elif dry_run:
        render_unplanned(out, [o for o in outcomes if o.sync not in display.planned])
    elif not display.log_json:
        render_summary(out, outcomes)
    stopped = next((o for o in outcomes if o.status == "interrupted"), None)
    if stopped is not None:
        if not json_output and not display.log_json:
            out.print(f"[yellow]{escape(stopped.error or 'interrupted')}[/yellow]", highlight=False)
        raise RunInterruptedReported(
            stopped.error or "interrupted", interrupt.requested() or signal.SIGINT
        )
    if any(o.status in ("failed", "refused") for o in outcomes):
        raise FailureReported("some syncs failed or were refused")


class _Display:
    """What a person sees while syncs run: plans on --dry-run, the delete question on a
    terminal, and per sync a progress bar on a terminal (from its first delivered batch) or a
    plain progress line every few seconds off one; with --log-format json, every event as a
    JSON line instead. Events may come from several syncs' threads at once."""

    def __init__(self, *, dry_run: bool, yes: bool, quiet: bool) -> None:
        self.dry_run = dry_run
        self.yes = yes
        self.quiet = quiet
        self.log_json = logs.json_logs()
        self.interactive = sys.stdin.isatty() and err.is_terminal
        self.bar = err.is_terminal and not quiet and not dry_run and not self.log_json
        # --json callers read the document (and often stderr with it): no progress lines
        self.lines = not err.is_terminal and not quiet and not dry_run and not self.log_json
        self.interval = _progress_interval()
        self.progress_bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.last_line: dict[str, float] = {}
        self.lock = threading.Lock()
        self.planned: set[str] = set()  # the syncs whose plan --dry-run showed

    def show_plan(self, plan: Plan) -> None:
        if self.dry_run and not self.quiet:
            with self.lock:
                render_plan(out, plan)
                self.planned.add(plan.sync)
            return
        if self.quiet or self.log_json or self.dry_run:
            return
        # A run says what its plan says must be read first: state of another target or mode
        # kept aside (a pause never gets this far).
        with self.lock:
            for line in plan_banners(plan):
                out.print(
                    f"[bold yellow]{escape(plan.sync)}: {escape(line)}[/bold yellow]",
                    highlight=False,
                )

    def confirm(self, plan: Plan) -> bool:
        if self.yes or not self.interactive:
            return True
        with self.lock:
            self._stop_bar()
        render_plan(err, plan)  # the question's context, on the terminal with the question
        return typer.confirm(
            f"Delete {plan.counts.delete:,} records from {plan.destination} {plan.object}?",
            default=False,
            err=True,
        )

    def event(self, event: RunEvent) -> None:
        if self.log_json:
            logs.write_event(event.to_json())
            return
        with self.lock:
            if event.event == "run_started":
                self.last_line[event.sync] = time.monotonic()
            elif event.event == "batch_acknowledged":
                self._progress(event)
            elif event.event == "run_finished":
                self._finished(event.sync)

    def _progress(self, event: RunEvent) -> None:
        sent, total = int(event.data["sent"]), int(event.data["total"])
        if self.bar:
            if self.progress_bar is None:
                from rich.progress import (  # only a run on a terminal draws a bar
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self.progress_bar = Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=err,
                    transient=True,
                )
                self.progress_bar.start()
            task = self.tasks.get(event.sync)
            if task is None:
                task = self.tasks[event.sync] = self.progress_bar.add_task(event.sync, total=total)
            self.progress_bar.update(task, completed=sent, total=total)
        elif self.lines:
            now = time.monotonic()
            if now - self.last_line.setdefault(event.sync, now) >= self.interval:
                self.last_line[event.sync] = now
                rejected = int(event.data["counts"].get("rejected", 0))
                err.print(
                    f"{event.sync}: {sent:,} / {total:,} sent, {rejected:,} rejected",
                    markup=False,
                    highlight=False,
                )

    def _finished(self, sync: str) -> None:
        self.last_line.pop(sync, None)
        task = self.tasks.pop(sync, None)
        if self.progress_bar is not None and task is not None:
            self.progress_bar.remove_task(task)
        if not self.tasks:
            self._stop_bar()

    def _stop_bar(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.stop()
            self.progress_bar = None
            self.tasks.clear()

    def done(self, outcome: RunOutcome) -> None:
        with self.lock:
            self._finished(outcome.sync)


def _progress_interval() -> float:
    value = os.environ.get(PROGRESS_INTERVAL_ENV)
    try:
        return max(0.0, float(value)) if value else PROGRESS_INTERVAL_S
    except ValueError:
        return PROGRESS_INTERVAL_S
