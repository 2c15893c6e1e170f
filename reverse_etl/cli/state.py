"""`retl state show/reset SYNC` and `retl unlock SYNC`: a sync's delivered state and its lock."""

from __future__ import annotations

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
from reverse_etl.errors import ConfirmationRequiredError, DeclinedError
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
