"""Imports every command module so that each registers itself on the Typer app.

The import order is the order of the help panels: Project, Syncs, Operations.
"""

from __future__ import annotations

from reverse_etl.cli.app import app

# isort: off
from reverse_etl.cli import init, validate  # noqa: F401  (Project)
from reverse_etl.cli import catalog  # noqa: F401  (Project: destinations, clone)
from reverse_etl.cli import plan, run  # noqa: F401  (Syncs)
from reverse_etl.cli import status, pause, runs, dlq, state, history, report  # noqa: F401  (Operations)
# isort: on

ORDER = [
    f"reverse_etl.cli.{name}"
    for name in (
        "init",
        "validate",
        "catalog",
        "plan",
        "run",
        "status",
        "pause",
        "runs",
        "dlq",
        "state",
        "history",
        "report",
    )
]

# A command line naming one command registers only that command's module (cli/__init__.py); if
# the same process later registers them all, the commands take the order above again (a stable
# sort: the commands of one module keep theirs).
app.registered_commands.sort(
    key=lambda info: ORDER.index(info.callback.__module__) if info.callback else len(ORDER)
)
