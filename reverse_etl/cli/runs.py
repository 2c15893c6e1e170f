"""`retl runs [SYNC]` and `retl runs show RUN_ID`: the run log, listed or one run in full."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    open_project,
    optional_sync,
    out,
    print_json,
)
from reverse_etl.cli.render import (
    RECORDS_LEGEND,
    Cell,
    Column,
    Compact,
    count,
    dead_letter_record,
    key_order,
    print_fields,
    print_rows,
    records_cell,
    short_when,
    status_text,
    when,
)
from reverse_etl.errors import UsageError

if TYPE_CHECKING:
    from reverse_etl.project.status import RunDetail
    from reverse_etl.state import RunRecord

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
        out.print("no runs yet" + (f" of {sync}" if sync else ""))
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
            _commit(r),
            _error(r),
        ]
        for r in records
    ]
    # At 80 columns: minutes instead of seconds, the counts in one column, errors below.
    compact_columns = [
        Column("run id"),
        Column("sync"),
        Column("status"),
        Column("started", wrap=True),
        Column("records", wrap=True),
        Column("commit", wrap=True),
    ]
    compact: list[list[Cell]] = [
        [
            r.id,
            r.sync,
            status_text(r.status),
            short_when(r.started_at),
            records_cell(r.counts),
            _commit(r),
        ]
        for r in records
    ]
    notes: list[Cell] = [Text(f"records: {RECORDS_LEGEND}", style="dim")]
    notes += [
        Text.assemble((f"{r.id}: ", "bold"), (_error(r), "red" if r.error else ""))
        for r in records
        if _error(r)
    ]
    if sync is not None:  # every row is of that sync
        columns.pop(1)
        rows = [[row[0], *row[2:]] for row in rows]
        compact_columns.pop(1)
        compact = [[row[0], *row[2:]] for row in compact]
    print_rows(out, columns, rows, compact=Compact(compact_columns, compact, notes))
    if total > len(records):
        out.print(f"showing {len(records):,} of {total:,}; use --limit N or --json", style="dim")


def _commit(r: RunRecord) -> str:
    return (r.git_commit or "-")[:8] + (" (dirty)" if r.git_dirty else "")


def _error(r: RunRecord) -> str:
    return r.error or (r.message if r.status in ("skipped", "refused") else None) or ""


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
        [[d.key, d.operation, d.error, dead_letter_record(d.record)] for d in letters],
        title=f"dead letters left by this run: {len(letters):,} (retry with `retl dlq retry {r.sync}`)",
    )
