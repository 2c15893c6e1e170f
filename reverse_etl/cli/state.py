"""`retl state show/reset SYNC`, `retl state migrate` and `retl unlock SYNC`: a sync's delivered
state, moving all state to another place, and a sync's lock."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    err,
    open_project,
    out,
    print_json,
    selected_syncs,
)
from reverse_etl.cli.render import Cell, Column, count, key_order, print_fields, print_rows
from reverse_etl.errors import (
    ConfigError,
    ConfirmationRequiredError,
    DeclinedError,
    StateError,
    UsageError,
)
from reverse_etl.state.migrate import MigrationReport
from reverse_etl.types import TargetId

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
    from reverse_etl.project.status import state_summary

    summary = state_summary(project, chosen)
    if json_output:
        print_json(summary.to_json())
        return
    if not summary.exists:
        out.print(f"{chosen.name} has no state yet: nothing was delivered")
        return
    fields: list[tuple[str, Cell]] = [
        ("sync", summary.sync),
        ("path", summary.path),
        ("records", count(summary.records)),
        ("watermark", "-" if summary.watermark is None else str(summary.watermark)),
        ("config hash", summary.config_hash or "-"),
        ("current config hash", summary.current_config_hash or "-"),
        ("serial", count(summary.serial)),
        ("lineage", summary.lineage or "-"),
        ("updated at", "-" if summary.updated_at is None else str(summary.updated_at)),
        ("last run id", summary.last_run_id or "-"),
        ("target", _target(summary.target)),
    ]
    if summary.current_target is not None and summary.current_target != summary.target:
        fields.append(("sync now targets", _target(summary.current_target)))
    fields += [
        *(("kept aside", path) for path in summary.kept_aside),
    ]
    print_fields(out, fields)
    if summary.sample:
        out.print()
        print_rows(
            out,
            [Column("key"), Column("hash")],
            [[k, h] for k, h in sorted(summary.sample, key=lambda kh: key_order(kh[0]))],
            title=f"a sample of {len(summary.sample)} delivered keys",
        )


@state_app.command("reset")
def state_reset(
    sync: Annotated[str, typer.Argument(help="The sync.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (needed off a terminal).")
    ] = False,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Forget what was delivered: the next run sends every row again (as new)."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    if not yes:
        if not (sys.stdin.isatty() and err.is_terminal):
            raise ConfirmationRequiredError(
                f"refusing to reset the state of {chosen.name} without confirmation",
                f"not on a terminal, nobody can answer; add --yes: retl state reset {chosen.name} --yes",
            )
        if not typer.confirm(
            f"Forget the delivered state of {chosen.name}?", default=False, err=True
        ):
            raise DeclinedError(f"the state of {chosen.name} was not reset")
    from reverse_etl.project.status import reset_state

    removed = reset_state(project, chosen)
    if json_output:
        print_json({"sync": chosen.name, "reset": removed})
        return
    out.print(f"state of {chosen.name} reset" if removed else f"{chosen.name} had no state")


@app.command(rich_help_panel="Operations")
def unlock(
    sync: Annotated[str, typer.Argument(help="The sync whose lock to clear.")],
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Clear a sync's lock left by a run that is gone."""
    project = open_project(project_dir)
    chosen = selected_syncs(project, [sync], None, False, require_valid=False)[0]
    from reverse_etl.project.status import unlock_sync

    unlocked, holder = unlock_sync(project, chosen)
    if json_output:
        print_json({"sync": chosen.name, "unlocked": unlocked, "holder": holder})
        return
    if unlocked:
        out.print(f"unlocked {chosen.name}" + (f" (was: {holder})" if holder else ""))
    else:
        out.print(f"{chosen.name} was not locked")


def _target(target: TargetId | None) -> str:
    if target is None:
        return "- (recorded by the next run)"
    return f"{target.destination} ({target.type}) {target.object} at {target.location}"


@state_app.command("migrate")
def state_migrate(
    to: Annotated[
        str | None,
        typer.Option("--to", help="Copy retl.yml's state to: local, postgres or warehouse."),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Copy state from local, postgres or warehouse into the place retl.yml names.",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The postgres database (default: env RETL_STATE_URL)."),
    ] = None,
    warehouse: Annotated[
        str | None,
        typer.Option(
            "--warehouse", help="The warehouse (default: state.warehouse or the only one)."
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option("--schema", help="Schema of the state (default: state.schema).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace differing state of a sync in the destination.")
    ] = False,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Copy every sync's state, the run log, dead letters and pauses to another place."""
    if (to is None) == (from_ is None):
        raise UsageError(
            "say where state goes with --to, or where it comes from with --from (one of them)",
            hint="e.g. retl state migrate --to postgres --url postgresql://user@host/db",
        )
    project = open_project(project_dir)
    if project.config is None:
        raise ConfigError("retl.yml has errors: run `retl validate`; state cannot be migrated")
    from reverse_etl.state.migrate import migrate, requested_place

    place = requested_place(
        project,
        to or from_ or "",
        url=url,
        warehouse=warehouse,
        schema=schema,
        environ=dict(os.environ),
    )
    report = migrate(project, place, direction="to" if to else "from", force=force)
    if json_output:
        print_json(report.to_json())
    else:
        _print_migration(report)
    if not report.ok:
        raise StateError(
            "the destination does not hold what was copied: " + "; ".join(report.mismatches()),
            hint="the source is untouched; migrate again (with --force to replace what differs)",
        )


def _print_migration(report: MigrationReport) -> None:
    out.print(f"from: {report.source_where}", markup=False)
    out.print(f"to:   {report.destination_where}", markup=False)
    out.print()
    rows: list[list[Cell]] = []
    for sync in report.syncs:
        current = sum(1 for k in sync.kept if k.current)
        rows.append(
            [
                sync.sync,
                count(current),
                count(len(sync.kept) - current),
                count(sync.records),
                sync.outcome,
            ]
        )
    if rows:
        print_rows(
            out,
            [
                Column("sync"),
                Column("current", numeric=True),
                Column("kept aside", numeric=True),
                Column("records", numeric=True),
                Column("result"),
            ],
            rows,
            title="snapshots (row counts and digests verified)",
        )
    else:
        out.print("no sync has state yet: no snapshot to copy")
    out.print()
    print_rows(
        out,
        [
            Column("table"),
            Column("rows", numeric=True),
            Column("copied", numeric=True),
            Column("result"),
        ],
        [
            [
                t.name,
                count(t.rows),
                count(t.copied),
                t.outcome if t.moved else "shared: stays where it is",
            ]
            for t in report.tables
        ],
        title="run log and co.",
    )
    out.print()
    if not report.ok:
        return
    out.print(
        f"the source ({report.source_where}) was left untouched; remove it yourself once the "
        "new place works",
        markup=False,
    )
    if report.retl_yml is not None:
        out.print("now put this in retl.yml (in place of any state: block):", markup=False)
        for line in report.retl_yml.splitlines():
            out.print(f"    {line}", markup=False)
