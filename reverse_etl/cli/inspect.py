"""`retl status`, `runs`, `dlq`, `state`, `unlock`, `history`: look at and tend a project's state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from croniter import croniter
from rich.table import Table

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    RoleOption,
    err,
    open_project,
    out,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.render import ago, render_summary, short, status_style
from reverse_etl.config import Project
from reverse_etl.errors import UsageError
from reverse_etl.git import file_history
from reverse_etl.run import Engine, RunOptions
from reverse_etl.state.lock import force_unlock, lock_holder


@app.command(rich_help_panel="Operations")
def status(json_output: JsonOption = False, project_dir: ProjectDirOption = None) -> None:
    """Per sync: mode, schedule, paused, last run, next due, dead letters."""
    project = open_project(project_dir)
    engine = Engine(project)
    run_log, dead = engine.run_log, engine.dead_letters.counts_by_sync()
    rows: list[dict[str, Any]] = []
    for name, sync in sorted(project.syncs.items()):
        config = sync.config
        last = run_log.last(name)
        next_due = None
        if config is not None and config.schedule.cron and not config.paused:
            base = last.started_at if last else datetime.now(UTC)
            next_due = croniter(config.schedule.cron, base).get_next(datetime)
        holder = lock_holder(engine.layout.locks, name)
        rows.append(
            {
                "sync": name,
                "valid": sync.ok,
                "mode": config.mode if config else None,
                "schedule": config.schedule.describe() if config else None,
                "paused": config.paused if config else None,
                "running": holder.describe() if holder else None,
                "last_run": last.to_dict() if last else None,
                "next_due": next_due.isoformat() if next_due else None,
                "dead_letters": dead.get(name, 0),
            }
        )
    if json_output:
        print_json({"syncs": rows})
        return
    table = Table(title=f"retl status · {project.root}", title_justify="left", header_style="bold")
    for column in (
        "sync",
        "mode",
        "schedule",
        "paused",
        "last run",
        "result",
        "rows",
        "next due",
        "dead letters",
    ):
        table.add_column(column)
    for row, name in zip(rows, sorted(project.syncs), strict=True):
        last = run_log.last(name)
        sent = sum(last.counts.get(k, 0) for k in ("create", "update", "delete")) if last else 0
        result = "running" if row["running"] else (last.status if last else "-")
        table.add_row(
            name if row["valid"] else f"{name} [red](invalid)[/red]",
            row["mode"] or "-",
            row["schedule"] or "-",
            "yes" if row["paused"] else "no",
            ago(last.started_at) if last else "never",
            status_style(result),
            f"{sent:,}" if last else "-",
            row["next_due"][:16].replace("T", " ") if row["next_due"] else "-",
            f"[red]{row['dead_letters']:,}[/red]" if row["dead_letters"] else "0",
        )
    out.print(table)


COUNTS = ("create", "update", "delete", "rejected")


def _optional_sync(project: Project, words: list[str], usage: str) -> str | None:
    """The one sync named by `words`, or None for all; an unknown name is a usage error."""
    if len(words) > 1:
        raise UsageError(usage)
    if not words:
        return None
    if words[0] not in project.syncs:
        project.select(words)  # raises the usual "no sync named ..." with a suggestion
    return words[0]


@app.command(rich_help_panel="Operations")
def runs(
    args: Annotated[
        list[str] | None, typer.Argument(help="[SYNC] or `show RUN_ID`.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs to list.")] = 20,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Run history (`retl runs [SYNC]`) or one run in full (`retl runs show RUN_ID`)."""
    project = open_project(project_dir)
    run_log = Engine(project).run_log
    words = args or []
    if words and words[0] == "show":
        if len(words) != 2:
            raise UsageError("usage: retl runs show RUN_ID")
        record = run_log.get(words[1])
        if record is None:
            raise UsageError(f"no run with id '{words[1]}'", "list runs with `retl runs`")
        if json_output:
            print_json(record.to_dict())
            return
        for key, value in record.to_dict().items():
            out.print(f"[bold]{key:>12}[/bold]  {value}", highlight=False)
        return
    sync = _optional_sync(project, words, "usage: retl runs [SYNC] | retl runs show RUN_ID")
    records = run_log.list(sync, limit=limit)
    if json_output:
        print_json({"runs": [r.to_dict() for r in records]})
        return
    table = Table(header_style="bold")
    for column in (
        "run id",
        "sync",
        "status",
        "started",
        "duration",
        "create",
        "update",
        "delete",
        "rejected",
        "commit",
        "error",
    ):
        if column == "error":
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=30)
        else:
            table.add_column(
                column,
                no_wrap=True,
                min_width=23 if column == "run id" else len(column),
                justify="right" if column in COUNTS else "left",
            )
    for r in records:
        table.add_row(
            r.id,
            r.sync,
            status_style(r.status),
            r.started_at.strftime("%m-%d %H:%M:%S"),
            f"{r.duration.total_seconds():.1f}s" if r.duration else "-",
            *(f"{r.counts.get(k, 0):,}" for k in ("create", "update", "delete", "rejected")),
            (r.git_commit or "-")[:8] + ("*" if r.git_dirty else ""),
            short(r.error or r.message or "", 50),
        )
    out.print(table)


@app.command(rich_help_panel="Operations")
def dlq(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[SYNC], `retry SYNC` or `clear SYNC`.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many rows to list.")] = 50,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting (retry).")
    ] = False,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Rows the destination rejected, with its error. `retry SYNC` resends them now; `clear SYNC` forgets them."""
    project = open_project(project_dir)
    engine = Engine(project, role=role)
    queue = engine.dead_letters
    words = args or []
    if words and words[0] in ("retry", "clear"):
        if len(words) != 2:
            raise UsageError(f"usage: retl dlq {words[0]} SYNC")
        sync = selected_syncs(project, [words[1]], None, False)[0]
        if words[0] == "clear":
            removed = queue.clear(sync.name)
            err.print(
                f"cleared {removed:,} dead letter(s) of {sync.name}; rows still different from "
                "what was delivered are sent again by the next run"
            )
            return
        outcome = engine.run(
            sync,
            RunOptions(only_dead_letters=True, trigger="dlq_retry", confirm=lambda _: yes or True),
        )
        if json_output:
            print_json({"runs": [outcome.to_json()]})
        else:
            render_summary(err, [outcome])
        if outcome.status in ("failed", "refused"):
            raise typer.Exit(1)
        return
    sync_name = _optional_sync(
        project, words, "usage: retl dlq [SYNC] | retl dlq retry SYNC | retl dlq clear SYNC"
    )
    letters = queue.list(sync_name, limit=limit)
    if json_output:
        print_json(
            {"dead_letters": [d.to_dict() for d in letters], "total": queue.count(sync_name)}
        )
        return
    if not letters:
        err.print("the dead letter queue is empty", style="green")
        return
    table = Table(header_style="bold")
    columns: tuple[str, ...] = ("key", "operation", "attempts", "last failed", "error", "record")
    if sync_name is None:
        columns = ("sync", *columns)
    for column in columns:
        table.add_column(
            column,
            no_wrap=True,
            overflow="ellipsis",
            max_width=60 if column in ("error", "record") else None,
        )
    for d in letters:
        row = [
            d.key,
            d.operation,
            str(d.attempts),
            ago(d.last_failed_at),
            d.error,
            json.dumps(d.record, default=str),
        ]
        table.add_row(*([d.sync, *row] if sync_name is None else row))
    out.print(table)
    total = queue.count(sync_name)
    if total > len(letters):
        err.print(f"showing {len(letters)} of {total:,}; use --limit or --json", style="dim")


state_app = typer.Typer(
    help="Inspect or reset a sync's delivered-state snapshot.", no_args_is_help=True
)
app.add_typer(state_app, name="state", rich_help_panel="Operations")


@state_app.command("show")
def state_show(
    sync: Annotated[str, typer.Argument(help="The sync.")],
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Records delivered, watermark, config hash and the last run of a sync."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    store = Engine(project).snapshot(chosen.name)
    meta = store.read_meta()
    document = {
        "sync": chosen.name,
        "path": project.relative(store.path),
        "records": meta.records if meta else 0,
        "watermark": meta.watermark if meta else None,
        "config_hash": meta.config_hash if meta else None,
        "current_config_hash": Engine(project).config_hash(chosen) if chosen.ok else None,
        "serial": meta.serial if meta else 0,
        "lineage": meta.lineage if meta else None,
        "updated_at": meta.updated_at if meta else None,
        "last_run_id": meta.last_run_id if meta else None,
        "sample": [{"key": k, "hash": h} for k, h in store.sample(5)],
    }
    if json_output:
        print_json(document)
        return
    if meta is None:
        err.print(f"{chosen.name} has no state yet: nothing was delivered")
        return
    for key, value in document.items():
        if key != "sample":
            out.print(f"[bold]{key:>20}[/bold]  {value}", highlight=False)


@state_app.command("reset")
def state_reset(
    sync: Annotated[str, typer.Argument(help="The sync.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Forget what was delivered: the next run sends every row again (as new)."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    engine = Engine(project)
    if not yes and not typer.confirm(
        f"Forget the delivered state of {chosen.name}?", default=False, err=True
    ):
        raise typer.Exit(1)
    from reverse_etl.state.lock import SyncLock

    with SyncLock(engine.layout.locks, chosen.name, command=f"retl state reset {chosen.name}"):
        removed = engine.snapshot(chosen.name).reset()
    err.print(f"state of {chosen.name} reset" if removed else f"{chosen.name} had no state")


@app.command(rich_help_panel="Operations")
def unlock(
    sync: Annotated[str, typer.Argument(help="The sync whose lock to clear.")],
    project_dir: ProjectDirOption = None,
) -> None:
    """Clear a sync's lock left by a run that is gone."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    locks = Engine(project).layout.locks
    holder = lock_holder(locks, chosen.name)
    if force_unlock(locks, chosen.name):
        err.print(f"unlocked {chosen.name}" + (f" (was: {holder.describe()})" if holder else ""))
    else:
        err.print(f"{chosen.name} was not locked")


@app.command(rich_help_panel="Operations")
def history(
    sync: Annotated[str, typer.Argument(help="The sync.")],
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
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
        err.print(f"{chosen.file} has no git history (not committed, or not in a git repository)")
        return
    for c in commits:
        out.print(
            f"[yellow]{c.commit[:8]}[/yellow] {c.date} [bold]{c.author}[/bold]  {c.message}",
            highlight=False,
        )
