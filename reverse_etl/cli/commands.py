"""Imports every command module so that each registers itself on the Typer app.

The import order is the order of the help panels: Project, Syncs, Operations.
"""

from __future__ import annotations

# isort: off
from reverse_etl.cli import init, validate  # noqa: F401  (Project)
from reverse_etl.cli import catalog  # noqa: F401  (Project: destinations, clone)
from reverse_etl.cli import plan, run  # noqa: F401  (Syncs)
from reverse_etl.cli import status, pause, runs, dlq, state, history, report  # noqa: F401  (Operations)
# isort: on
