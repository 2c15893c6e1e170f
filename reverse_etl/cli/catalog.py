"""`retl destinations` (connectors, a destination's objects, an object's fields) and
`retl clone` (copy a sync file, e.g. onto a sandbox destination)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from reverse_etl.cli.app import app
from reverse_etl.cli.common import (
    JsonOption,
    ProjectDirOption,
    open_project,
    out,
    print_json,
    print_problems,
)
from reverse_etl.cli.render import Column, count, print_rows
from reverse_etl.errors import FailureReported, ProjectNotFoundError
from reverse_etl.project import (
    clone_sync,
    destination_objects,
    list_connectors,
    list_destinations,
    object_fields,
)


@app.command(rich_help_panel="Project")
def destinations(
    destination: Annotated[
        str | None,
        typer.Argument(help="A destination of retl.yml: list its objects.", show_default=False),
    ] = None,
    object: Annotated[
        str | None,
        typer.Argument(help="An object of that destination: list its fields.", show_default=False),
    ] = None,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """List connectors and destinations, a destination's objects, or an object's fields."""
    if destination is None:
        _list_all(json_output, project_dir)
    elif object is None:
        project = open_project(project_dir)
        objects = destination_objects(project, destination)
        if json_output:
            print_json({"destination": destination, "objects": objects})
            return
        print_rows(
            out, [Column("object")], [[name] for name in objects], title=f"objects of {destination}"
        )
        if not objects:
            out.print(f"destination '{destination}' has no objects yet")
    else:
        project = open_project(project_dir)
        fields = object_fields(project, destination, object)
        if json_output:
            print_json(
                {
                    "destination": destination,
                    "object": object,
                    "fields": [
                        {
                            "name": f.name,
                            "type": f.type,
                            "nullable": f.nullable,
                            "unique": f.unique,
                            "required": f.required,
                            "writable": f.writable,
                        }
                        for f in fields
                    ],
                }
            )
            return
        print_rows(
            out,
            [
                Column("field"),
                Column("type", wrap=True),
                Column("required"),
                Column("writable"),
                Column("unique"),
            ],
            [[f.name, f.type, _yes(f.required), _yes(f.writable), _yes(f.unique)] for f in fields],
            title=f"fields of {destination} {object}",
        )


def _list_all(json_output: bool, project_dir: Path | None) -> None:
    connectors = list_connectors()
    try:
        project = open_project(project_dir)
    except ProjectNotFoundError:
        if project_dir is not None:
            raise
        project = None  # outside a project the connectors are still worth listing
    configured = list_destinations(project) if project is not None else []
    if json_output:
        print_json(
            {
                "connectors": [
                    {
                        "type": c.type,
                        "actions": list(c.actions),
                        "default_batch_size": c.default_batch_size,
                        "max_batch_size": c.max_batch_size,
                    }
                    for c in connectors
                ],
                "destinations": [{"name": d.name, "type": d.type} for d in configured],
            }
        )
        return
    print_rows(
        out,
        [Column("type"), Column("actions", wrap=True), Column("default batch size", numeric=True)],
        [[c.type, ", ".join(c.actions), count(c.default_batch_size)] for c in connectors],
        title="connectors",
    )
    if project is None:
        out.print("not in a retl project: no configured destinations to list")
        return
    print_rows(
        out,
        [Column("name"), Column("type")],
        [[d.name, d.type] for d in configured],
        title="destinations in retl.yml",
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


@app.command(rich_help_panel="Project")
def clone(
    sync: Annotated[str, typer.Argument(help="The sync to copy.", show_default=False)],
    new: Annotated[
        str, typer.Argument(help="Name of the copy (syncs/NEW.yml).", show_default=False)
    ],
    destination: Annotated[
        str | None,
        typer.Option("--destination", help="Destination of the copy.", show_default=False),
    ] = None,
    object: Annotated[
        str | None,
        typer.Option("--object", help="Destination object of the copy.", show_default=False),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite syncs/NEW.yml if it exists.")
    ] = False,
    json_output: JsonOption = False,
    project_dir: ProjectDirOption = None,
) -> None:
    """Write syncs/NEW.yml as a copy of SYNC (comments kept), e.g. onto a sandbox destination."""
    project = open_project(project_dir)
    result = clone_sync(project, sync, new, destination=destination, object=object, force=force)
    if json_output:
        print_json(
            {
                "sync": result.name,
                "file": result.file,
                "overwritten": result.overwritten,
                "schedule": "manual",
                "schedule_was": result.schedule_was,
                "ok": result.ok,
                "problems": [p.to_json() for p in result.problems],
            }
        )
    else:
        verb = "overwrote" if result.overwritten else "wrote"
        out.print(f"[green]{verb}[/green] {escape(result.file)} (a copy of {escape(sync)})")
        if result.schedule_was is not None:
            out.print(
                f"schedule: manual (the original runs on '{escape(result.schedule_was)}'); "
                f"`retl run --all` leaves the copy alone until you set a schedule in {escape(result.file)}"
            )
        print_problems(result.problems, out)
        if not result.ok:
            out.print(
                f"[red]the new sync '{escape(result.name)}' is not valid[/red]: "
                "fix the file above, then run `retl validate`"
            )
    if not result.ok:
        raise FailureReported(f"the new sync '{result.name}' is not valid")
