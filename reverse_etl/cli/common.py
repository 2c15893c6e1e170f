"""What every command shares: options, project loading, consoles and error rendering."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.markup import escape

from reverse_etl.config import Problem, Project, Sync, find_project_root
from reverse_etl.errors import UsageError
from reverse_etl.redact import redact, redact_data
from reverse_etl.validate import load_project

if TYPE_CHECKING:
    from reverse_etl.run import Engine


class _RedactedStream:
    """A text stream that masks secrets in everything written to it (reverse_etl.redact)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _RedactedConsole(Console):
    """A rich console whose output passes through `redact`, whatever renders into it."""

    @property
    def file(self) -> IO[str]:
        return cast(IO[str], _RedactedStream(super().file))

    @file.setter
    def file(self, new_file: IO[str]) -> None:
        self._file = new_file


# A command's human output goes to `out` (stdout), where `retl plan | less` finds it; with
# --json, stdout holds the JSON document and nothing else, and human text goes to `err` or
# nowhere. `err` also carries error messages, prompts and progress. The width is read when
# printing (terminal size, or COLUMNS); tables off a terminal print at full width
# (cli/render.py), and soft wrap leaves long lines whole for the terminal to wrap. Everything
# printed passes through `redact`.
out = _RedactedConsole(stderr=False, highlight=False, soft_wrap=True)
err = _RedactedConsole(stderr=True, highlight=False, soft_wrap=True)

ProjectDirOption = Annotated[
    Path | None,
    typer.Option(
        "--project-dir",
        help="Project root (default: nearest retl.yml upwards; env RETL_PROJECT_DIR).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
SyncsArgument = Annotated[
    list[str] | None,
    typer.Argument(help="Sync names or glob patterns (crm_*).", show_default=False),
]
SelectOption = Annotated[
    list[str] | None,
    typer.Option(
        "--select", "-s", help="Glob pattern of sync names; repeatable.", show_default=False
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every sync of the project.")]
RoleOption = Annotated[
    str | None,
    typer.Option(
        "--role",
        envvar="RETL_ROLE",
        help="Role to act as, checked against a warehouse's roles (env RETL_ROLE).",
        show_default=False,
    ),
]


def open_project(project_dir: Path | None) -> Project:
    root = find_project_root(explicit=project_dir)
    return load_project(root)


def open_engine(project: Project, role: str | None = None) -> Engine:
    """The project's Engine, its state store closed when the command ends."""
    from typer._click.globals import get_current_context

    from reverse_etl.run import Engine

    engine = Engine(project, role=role)
    context = get_current_context(silent=True)
    if context is not None:
        context.call_on_close(engine.close)
    return engine


def selected_syncs(
    project: Project,
    names: list[str] | None,
    select: list[str] | None,
    all_syncs: bool,
    *,
    require_valid: bool = True,
) -> list[Sync]:
    syncs = project.select(names or [], select or [], all_syncs)
    if require_valid:
        project.require_valid(syncs)
    return syncs


def optional_sync(project: Project, words: list[str], usage: str) -> str | None:
    """The one sync named by `words`, or None for all; an unknown name is a usage error."""
    if len(words) > 1:
        raise UsageError(usage)
    if not words:
        return None
    if words[0] not in project.syncs:
        project.select(words)  # raises the usual "no sync named ..." with a suggestion
    return words[0]


def print_problems(
    problems: list[Problem], console: Console = err, *, annotate: bool = True
) -> None:
    for problem in sorted(problems, key=lambda p: (p.file != "retl.yml", p.file, p.line or 0)):
        style = "red" if problem.severity == "error" else "yellow"
        console.print(
            f"[bold]{escape(problem.location())}[/bold]: [{style}]{escape(problem.message)}[/{style}]",
            markup=True,
            highlight=False,
        )
        if problem.hint:
            console.print(f"    hint: {problem.hint}", style="dim", markup=False)
    if annotate and os.environ.get("GITHUB_ACTIONS") == "true":
        for problem in problems:
            sys.stdout.write(redact(problem.github_annotation()) + "\n")


def print_warning(message: str, hint: str | None = None) -> None:
    """A warning on stderr (a human reads it; --json output stays one document on stdout)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)
    if hint:
        err.print(f"    hint: {hint}", style="dim", markup=False)


def print_json(document: Any) -> None:
    """The document on stdout, with every string redacted (values stay valid JSON)."""
    text = json.dumps(redact_data(json.loads(json.dumps(document, default=str))), indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
