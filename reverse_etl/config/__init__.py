"""Load and validate retl.yml and syncs/*.yml."""

from __future__ import annotations

from reverse_etl.config.models import (
    DestinationConfig,
    FieldSource,
    ProjectConfig,
    Schedule,
    SyncConfig,
    WarehouseConfig,
)
from reverse_etl.config.problems import Problem
from reverse_etl.config.project import (
    PROJECT_FILE,
    Project,
    Sync,
    find_project_root,
    load_project,
)

__all__ = [
    "PROJECT_FILE",
    "DestinationConfig",
    "FieldSource",
    "Problem",
    "Project",
    "ProjectConfig",
    "Schedule",
    "Sync",
    "SyncConfig",
    "WarehouseConfig",
    "find_project_root",
    "load_project",
]
