"""`retl runs [SYNC]` and `retl runs show RUN_ID`: the run log, listed or one run in full."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    err,
    open_project,
    optional_sync,
    out,
    print_json,
)
from reverse_etl.cli.render import (
    Cell,
    Column,
    count,
    key_order,
    print_fields,
    print_rows,
    status_text,
    when,
)
from reverse_etl.errors import UsageError

if TYPE_CHECKING:
    from reverse_etl.project.status import RunDetail

COUNTS = ("create", "update", "delete", "rejected")


@app.command(rich_help_panel="Operations")
def runs(
    args: Annotated[
        list[str] | None, typer.Argument(help="[SYNC] or `show RUN_ID`.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs to list.")] = 20,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Run history (`retl runs [SYNC]`) or one run in full (`retl runs show RUN_ID`)."""
    from reverse_etl.project.status import run_detail, run_history

    project = open_project(project_dir)
    words = args or []
    if words and words[0] == "show":
        if len(words) != 2:
            raise UsageError("usage: retl runs show RUN_ID")
        detail = run_detail(project, words[1])
        if detail is None:
            raise UsageError(f"no run with id '{words[1]}'", "list runs with `retl runs`")
        if json_output:
            print_json(detail.to_json())
        else:
            _render_detail(detail)
        return
    sync = optional_sync(project, words, "usage: retl runs [SYNC] | retl runs show RUN_ID")
    records, total = run_history(project, sync, limit)
    if json_output:
        print_json({"runs": [r.to_dict() for r in records], "total": total})
        return
    if not records:
        err.print("no runs yet" + (f" of {sync}" if sync else ""))
        return
    columns = [
        Column("run id"),
        Column("sync"),
        Column("status"),
        Column("started"),
        Column("duration", numeric=True, optional=True),
        *(Column(k, numeric=True) for k in COUNTS),
        Column("commit"),
        Column("error", wrap=True),
    ]
    rows: list[list[Cell]] = [
        [
            r.id,
            r.sync,
            status_text(r.status),
            when(r.started_at),
            f"{r.duration.total_seconds():,.1f}s" if r.duration else "-",
            *(count(r.counts.get(k, 0)) for k in COUNTS),
            (r.git_commit or "-")[:8] + (" (dirty)" if r.git_dirty else ""),
            r.error or (r.message if r.status in ("skipped", "refused") else None) or "",
        ]
        for r in records
    ]
    if sync is not None:  # every row is of that sync
        columns.pop(1)
        rows = [[row[0], *row[2:]] for row in rows]
    print_rows(out, columns, rows)
    if total > len(records):
        err.print(f"showing {len(records):,} of {total:,}; use --limit N or --json", style="dim")


def _render_detail(detail: RunDetail) -> None:
    """One run as `key: value` lines, then its counts, error and dead letters."""
    r = detail.record
    fields: list[tuple[str, Cell]] = [
        ("run id", r.id),
        ("sync", r.sync),
        ("status", status_text(r.status)),
        ("trigger", r.trigger),
        ("started", when(r.started_at)),
        ("finished", when(r.finished_at)),
        ("duration", f"{r.duration.total_seconds():,.1f}s" if r.duration else "-"),
        (
            "commit",
            (r.git_commit or "-") + (" (dirty: uncommitted changes)" if r.git_dirty else ""),
        ),
        ("config hash", r.config_hash or "-"),
    ]
    if r.error:
        fields.append(("error", Text(r.error, style="red")))
    if r.message:
        fields.append(("note", r.message))
    print_fields(out, fields)
    counts = {k: v for k, v in r.counts.items() if v} or dict.fromkeys(COUNTS, 0)
    out.print()
    print_rows(
        out,
        [Column("operation"), Column("records", numeric=True)],
        [[name, count(value)] for name, value in counts.items()],
        title="counts",
    )
    letters = sorted(detail.dead_letters, key=lambda d: key_order(d.key))
    out.print()
    if not letters:
        out.print(Text("dead letters: none left by this run", style="green"))
        return
    print_rows(
        out,
        [
            Column("key"),
            Column("operation"),
            Column("error", wrap=True),
            Column("record", wrap=True),
        ],
        [[d.key, d.operation, d.error, json.dumps(d.record, default=str)] for d in letters],
        title=f"dead letters left by this run: {len(letters):,} (retry with `retl dlq retry {r.sync}`)",
    )
