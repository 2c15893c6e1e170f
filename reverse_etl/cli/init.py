"""`retl init [DIR]`: scaffold a project that validates and runs right away."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from reverse_etl.cli.app import app
from reverse_etl.cli.common import JsonOption, out, print_json
from reverse_etl.project.scaffold import init_project


@app.command(rich_help_panel="Project")
def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to create the project (created if missing).")
    ] = Path("."),
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite retl.yml and the example files if present.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create retl.yml, an example sync and SQL file, and a .gitignore for .retl/."""
    result = init_project(directory, force=force)
    if json_output:
        print_json(
            {
                "root": str(result.root),
                "created": result.created,
                "overwritten": result.overwritten,
                "gitignore_updated": result.gitignore_updated,
            }
        )
        return
    shown = _shown(result.root)
    out.print(f"[green]Created a retl project in {shown}[/green]")
    for path in result.created:
        out.print(f"  created      {path}")
    for path in result.overwritten:
        out.print(f"  overwritten  {path}")
    if result.gitignore_updated:
        out.print("  updated      .gitignore")
    out.print("\nNext steps:")
    if shown != ".":
        out.print(f"  cd {shown}")
    out.print("  retl validate              # check retl.yml and syncs/")
    out.print("  retl preview example       # the records the example sync would send")
    out.print("  retl plan                  # what a run would create, update and delete")
    out.print("  retl run example           # deliver them (into output/app.sqlite)")
    out.print("Then point retl.yml at your warehouse and write your own syncs/*.yml.")


def _shown(root: Path) -> str:
    """The project directory as the user would type it: relative when below the cwd."""
    try:
        relative = os.path.relpath(root)
    except ValueError:  # another drive on Windows
        return str(root)
    return str(root) if relative.startswith("..") else relative
