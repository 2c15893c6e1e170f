"""`retl status`: per sync its mode, schedule, last run, next due time and dead letters, and
where the run log, pauses and locks live (`state:` in retl.yml)."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    open_engine,
    open_project,
    out,
    print_json,
    print_warning,
)
from reverse_etl.cli.render import (
    Cell,
    Column,
    Compact,
    ago,
    count,
    print_rows,
    short_when,
    status_text,
)


@app.command(rich_help_panel="Operations")
def status(json_output: JsonOption = False, project_dir: ProjectDirOption = None) -> None:
    """Per sync: mode, schedule, paused, last run, next due, dead letters."""
    project = open_project(project_dir)
    from reverse_etl.project.status import project_status

    engine = open_engine(project)
    lost = engine.lost_run_log()
    if lost is not None:
        print_warning(*lost)
    rows = project_status(project, engine)
    store = engine.store
    if json_output:
        print_json({"syncs": [row.to_json() for row in rows], "state": store.to_json()})
        return
    columns = [
        Column("sync"),
        Column("mode"),
        Column("schedule", wrap=True),
        Column("paused"),
        Column("last run"),
        Column("result"),
        Column("rows", numeric=True),
        Column("next due"),
        Column("dead letters", numeric=True),
    ]
    table: list[list[Cell]] = []
    # At 80 columns: the last result joins its time, a pause shows where the next due time
    # would be, times shorten, and the dead letters column takes the command's name (`retl dlq`).
    compact_columns = [
        Column("sync"),
        Column("mode"),
        Column("schedule", wrap=True),
        Column("last run", wrap=True),
        Column("rows", numeric=True),
        Column("due", wrap=True),
        Column("dlq", numeric=True),
    ]
    compact: list[list[Cell]] = []
    for row in rows:
        last = row.last_run
        name = Text(row.sync)
        if not row.valid:
            name.append(" (invalid)", style="red")
        result = "running" if row.running else (last.status if last else "-")
        paused = row.pause is not None or row.paused
        dead = Text(count(row.dead_letters), style="red" if row.dead_letters else "")
        table.append(
            [
                name,
                row.mode or "-",
                row.schedule or "-",
                Text("yes (pause)", style="yellow")
                if row.pause
                else ("yes" if row.paused else "no"),
                ago(last.started_at) if last else "never",
                status_text(result),
                count(row.sent),
                row.next_due.strftime("%Y-%m-%d %H:%M") if row.next_due else "-",
                dead,
            ]
        )
        compact.append(
            [
                name,
                row.mode or "-",
                row.schedule or "-",
                Text.assemble(status_text(result), " ", ago(last.started_at, short=True))
                if last
                else status_text(result if row.running else "never"),
                count(row.sent),
                Text("paused", style="yellow") if paused else short_when(row.next_due),
                dead,
            ]
        )
    print_rows(
        out,
        columns,
        table,
        title=f"retl status · {project.root}",
        compact=Compact(compact_columns, compact),
    )
    if store.kind != "local" or store.note is not None:
        # The default (.retl/ on this machine) goes without saying.
        out.print(f"state: {escape(store.where)}", highlight=False)
        if store.note is not None:
            out.print(escape(store.note), highlight=False)
    for row in rows:
        if row.pause is not None:
            out.print(
                f"[yellow]{escape(row.sync)}[/yellow]: {escape(row.pause.describe())}; "
                f"resume with `retl resume {escape(row.sync)}`",
                highlight=False,
            )
