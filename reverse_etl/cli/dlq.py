"""`retl dlq [SYNC]`, `retl dlq retry SYNC`, `retl dlq clear SYNC`: the dead letter queue."""

from __future__ import annotations

from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    RoleOption,
    err,
    open_engine,
    open_project,
    optional_sync,
    out,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.render import (
    Column,
    ago,
    count,
    dead_letter_record,
    key_order,
    print_rows,
    render_summary,
)
from reverse_etl.errors import FailureReported, UsageError


@app.command(rich_help_panel="Operations")
def dlq(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[SYNC], `retry SYNC` or `clear SYNC`.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many rows to list.")] = 50,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting (retry).")
    ] = False,
    json_output: JsonOption = False,
    role: RoleOption = None,
    project_dir: ProjectDirOption = None,
) -> None:
    """Rows the destination rejected, with its error. `retry SYNC` resends them now; `clear SYNC` forgets them."""
    project = open_project(project_dir)
    from reverse_etl.run import RunOptions

    engine = open_engine(project, role=role)
    queue = engine.dead_letters
    words = args or []
    if words and words[0] in ("retry", "clear"):
        if len(words) != 2:
            raise UsageError(f"usage: retl dlq {words[0]} SYNC")
        sync = selected_syncs(project, [words[1]], None, False)[0]
        if words[0] == "clear":
            removed = queue.clear(sync.name)
            doubts = engine.doubts.clear(sync.name)
            if doubts:
                (err if json_output else out).print(
                    f"forgot {doubts:,} record(s) in doubt of {sync.name}: the next run sends "
                    "them again as if never sent (a record that did land may then be repeated)"
                )
            if json_output:
                print_json({"sync": sync.name, "cleared": removed, "in_doubt_cleared": doubts})
                return
            out.print(
                f"cleared {removed:,} dead letter(s) of {sync.name}; rows still different from "
                "what was delivered are sent again by the next run"
            )
            return
        queued = set(queue.keys(sync.name))
        outcome = engine.run(
            sync,
            RunOptions(only_dead_letters=True, trigger="dlq_retry", confirm=lambda _: yes or True),
        )
        still = len(queued.intersection(queue.keys(sync.name)))
        if json_output:
            print_json({"runs": [outcome.to_json()], "still_queued": still})
        else:
            render_summary(out, [outcome])
        if outcome.status in ("failed", "refused"):
            raise FailureReported(f"retrying the dead letters of {sync.name} {outcome.status}")
        if still:
            message = (
                f"{still:,} of {len(queued):,} dead letters of {sync.name} were rejected again "
                f"and stay in the queue; see `retl dlq {sync.name}`"
            )
            err.print(message, style="red")
            raise FailureReported(message)
        return
    sync_name = optional_sync(
        project, words, "usage: retl dlq [SYNC] | retl dlq retry SYNC | retl dlq clear SYNC"
    )
    letters = sorted(
        queue.list(sync_name, limit=limit),
        key=lambda d: (d.sync, d.first_failed_at, key_order(d.key)),
    )
    total = queue.count(sync_name)
    doubtful = [
        d
        for name in ([sync_name] if sync_name else sorted(project.syncs))
        for d in engine.doubts.list(name, limit=limit)
    ]
    if json_output:
        print_json(
            {
                "dead_letters": [d.to_dict() for d in letters],
                "total": total,
                "in_doubt": [
                    {
                        "sync": d.sync,
                        "key": d.key,
                        "operation": d.operation,
                        "reason": d.reason,
                        "run_id": d.run_id,
                        "since": d.since.isoformat(),
                    }
                    for d in doubtful
                ],
            }
        )
        return
    if doubtful:
        out.print(
            f"{len(doubtful):,} record(s) in doubt: sent, but the destination's answer did not "
            "say whether it applied them. The next run looks them up (or sends them again where "
            "that is harmless) before anything else; `retl dlq clear SYNC` forgets them.",
            style="yellow",
        )
        print_rows(
            out,
            [Column("sync"), Column("key"), Column("operation"), Column("reason", wrap=True)],
            [[d.sync, d.key, d.operation, d.reason] for d in doubtful],
        )
    if not letters:
        out.print("the dead letter queue is empty", style="green")
        return
    columns = [
        Column("key"),
        Column("operation"),
        Column("attempts", numeric=True),
        Column("last failed", optional=True),
        Column("error", wrap=True),
        Column("record", wrap=True),
    ]
    if sync_name is None:
        columns.insert(0, Column("sync"))
    rows = []
    for d in letters:
        row = [
            d.key,
            d.operation,
            count(d.attempts),
            ago(d.last_failed_at),
            d.error,
            dead_letter_record(d.record),
        ]
        rows.append([d.sync, *row] if sync_name is None else row)
    print_rows(out, columns, rows)
    if total > len(letters):
        out.print(f"showing {len(letters):,} of {total:,}; use --limit N or --json", style="dim")
