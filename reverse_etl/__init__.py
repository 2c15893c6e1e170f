"""retl: declarative Reverse ETL. Sync warehouse rows into databases, files and APIs.

The engine works without the CLI::

    from reverse_etl import Engine, load_project

    project = load_project(Path("."))
    engine = Engine(project)
    plan = engine.plan(project.syncs["customers_to_app"])
    outcome = engine.run(project.syncs["customers_to_app"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from reverse_etl.config import Project, Sync, find_project_root
    from reverse_etl.errors import RetlError
    from reverse_etl.plan import Plan
    from reverse_etl.run import Engine, RunEvent, RunOptions, RunOutcome
    from reverse_etl.validate import load_project

# Imported on first use, so that `retl --version` does not load DuckDB and Arrow.
_LAZY = {
    "Engine": "reverse_etl.run",
    "RunEvent": "reverse_etl.run",
    "RunOptions": "reverse_etl.run",
    "RunOutcome": "reverse_etl.run",
    "Plan": "reverse_etl.plan",
    "Project": "reverse_etl.config",
    "Sync": "reverse_etl.config",
    "find_project_root": "reverse_etl.config",
    "load_project": "reverse_etl.validate",
    "RetlError": "reverse_etl.errors",
}

__all__ = [
    "Engine",
    "Plan",
    "Project",
    "RetlError",
    "RunEvent",
    "RunOptions",
    "RunOutcome",
    "Sync",
    "__version__",
    "find_project_root",
    "load_project",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reverse_etl' has no attribute {name!r}")
