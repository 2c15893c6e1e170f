"""Validation that needs the layers above config: connectors, live checks, change review.

`config` checks files on their own; this package adds what only the installed connectors, the
live warehouse and destinations (`--connect`) or git (`--base`) can tell. Everything `retl
validate` reports comes from `validate_project`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from reverse_etl.config import Problem, Project, Sync
from reverse_etl.config import load_project as load_project_files


def load_project(root: Path, env: Mapping[str, str] | None = None) -> Project:
    """Load a project and check it against the installed connectors: what every command uses."""
    from reverse_etl.validate.connectors import check_connectors

    project = load_project_files(root, os.environ if env is None else env)
    check_connectors(project)
    return project


def validate_project(
    project: Project,
    syncs: Iterable[Sync],
    *,
    connect: bool = False,
    base: str | None = None,
    role: str | None = None,
) -> list[Problem]:
    """Every problem of retl.yml and of these syncs; `connect` adds the live checks (as `role`),
    `base` the risky changes since that git ref (a bad ref raises UsageError). Scheduled syncs
    without an alert channel are warnings."""
    from reverse_etl.validate.hygiene import alert_hygiene

    chosen = list(syncs)
    problems = list(project.problems)
    for sync in chosen:
        problems.extend(sync.problems)
    problems.extend(alert_hygiene(project, chosen))
    if connect:
        from reverse_etl.validate.connect import connect_checks

        problems.extend(connect_checks(project, [s for s in chosen if s.ok], role=role))
    if base is not None:
        from reverse_etl.validate.changes import changes_since

        problems.extend(changes_since(project, chosen, base))
    return problems


__all__ = ["load_project", "validate_project"]
