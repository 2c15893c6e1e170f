"""`retl plan` and `retl preview`: read-only views of what a run would do."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

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
    open_engine,
    open_project,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.common import (
    out as stdout,
)
from reverse_etl.cli.markdown import (
    ImpactContext,
    PlannedSync,
    render_markdown,
    state_available,
)
from reverse_etl.cli.render import render_plan, render_preview
from reverse_etl.config import Problem, Sync
from reverse_etl.errors import ConfigError, FailureReported, RetlError, UsageError
from reverse_etl.git import head_commit
from reverse_etl.validate.changes import ChangeSet, SyncChange, changed_syncs


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


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
    changed_since: Annotated[
        str | None,
        typer.Option(
            "--changed-since",
            metavar="GIT_REF",
            help="Only the syncs whose sync file, SQL file or destination/warehouse block in "
            "retl.yml changed since this git ref (e.g. origin/main), and what changed.",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        PlanFormat | None,
        typer.Option(
            "--format",
            help="text (default), json (as --json) or markdown (a pull-request "
            "comment, on stdout).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Show what a run would create, update and delete, counts first, then samples. Writes nothing."""
    shape = _shape(output_format, json_output)
    # stdout holds the text plan, or the JSON / markdown document and nothing else
    human = stdout if shape is PlanFormat.text else err
    project = open_project(project_dir)
    explicit = bool(syncs or select or all_syncs)
    chosen = selected_syncs(project, syncs, select, all_syncs, require_valid=False)
    changes: ChangeSet | None = None
    if changed_since is not None:
        changes = changed_syncs(project, changed_since, chosen if explicit else None)
        chosen = changes.syncs
        if shape is PlanFormat.text:
            _changes_headline(changes)
    else:
        project.require_valid(chosen)
    from reverse_etl.plan.files import save_plans

    engine = open_engine(project, role=role)
    backend = project.config.state.backend if project.config else "local"
    documents = []
    plans = []
    planned: list[PlannedSync] = []
    failed = False
    for sync in chosen:
        change = changes.changes.get(sync.name) if changes else None
        if shape is PlanFormat.text and change is not None:
            _change_text(sync, change)
        try:
            if changes is not None:
                project.require_valid([sync])  # one broken sync must not hide the others
            result = engine.plan(sync, full_resync=full_resync)
        except RetlError as exc:
            failed = True
            message = _first_problem(exc)
            human.print(f"[red]{sync.name}[/red]: {escape(message)}", highlight=False)
            if exc.hint:
                human.print(f"    hint: {exc.hint}", style="dim", markup=False)
            documents.append(_with_change({"name": sync.name, "error": message}, change))
            planned.append(PlannedSync(sync.name, None, message, exc.hint))
            continue
        plans.append(result)
        planned.append(PlannedSync(sync.name, result))
        documents.append(_with_change(result.to_json(), change))
        if shape is PlanFormat.text:
            render_plan(stdout, result)
            if changes is not None and not state_available(result, backend):
                stdout.print(
                    "  no state for this sync here (local state, no .retl/ snapshot): every "
                    "source row counts as new",
                    style="yellow",
                    markup=False,
                )
    document: dict[str, Any] = {"syncs": documents}
    if changes is not None:
        document["changed_since"] = changes.ref
        document["removed"] = list(changes.removed)
    if out is not None:
        if failed:
            human.print(f"no plan file written: a sync could not be planned ({out} unchanged)")
        else:
            save_plans(out, plans)
            human.print(f"plan saved to {out}; apply it with `retl run --plan {out}`", style="dim")
    if shape is PlanFormat.json:
        print_json(document)
    elif shape is PlanFormat.markdown:
        context = ImpactContext(
            ref=changed_since,
            commit=head_commit(project.root),
            state_backend=backend,
            command=_command(changed_since),
        )
        sys.stdout.write(render_markdown(planned, changes, context))
        sys.stdout.flush()
    if failed:
        raise FailureReported("some syncs could not be planned")


def _first_problem(exc: RetlError) -> str:
    """The error's message; for invalid files, with the first problem (file:line: message)."""
    if isinstance(exc, ConfigError) and exc.problems:
        first = exc.problems[0]
        if isinstance(first, Problem):
            return f"{exc.message}; first {first.location()}: {first.message}"
    return exc.message


def _shape(output_format: PlanFormat | None, json_output: bool) -> PlanFormat:
    if json_output and output_format not in (None, PlanFormat.json):
        raise UsageError(
            f"--json and --format {output_format.value if output_format else ''} disagree",
            "use one of them: --json is --format json",
        )
    if json_output:
        return PlanFormat.json
    return output_format or PlanFormat.text


def _command(ref: str | None) -> str:
    words = ["retl", "plan"]
    if ref is not None:
        words += ["--changed-since", ref]
    return " ".join([*words, "--format", "markdown"])


def _with_change(document: dict[str, Any], change: SyncChange | None) -> dict[str, Any]:
    if change is not None:
        document["change"] = change.to_json()
    return document


def _changes_headline(changes: ChangeSet) -> None:
    names = ", ".join(s.name for s in changes.syncs)
    if changes.syncs:
        stdout.print(
            f"{len(changes.syncs)} sync(s) changed since {escape(changes.ref)}: {escape(names)}",
            highlight=False,
        )
    else:
        stdout.print(
            f"no sync changed since {escape(changes.ref)}: nothing to plan", highlight=False
        )
    for name in changes.removed:
        stdout.print(
            f"removed since {escape(changes.ref)}: {escape(name)} (its records stay in the "
            "destination)",
            style="yellow",
            highlight=False,
        )


def _change_text(sync: Sync, change: SyncChange) -> None:
    stdout.print(f"\n[bold]{escape(sync.name)}[/bold] changed:", highlight=False)
    for words in change.changes:
        style = "bold red" if change.destructive and words.endswith("→ delete") else "yellow"
        stdout.print(f"  {escape(words)}", style=style, highlight=False, markup=False)


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
        render_preview(stdout, result)
