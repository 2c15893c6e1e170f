"""Where a project's local state lives: `.retl/` at the project root (git-ignored)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @classmethod
    def for_project(cls, project_root: Path) -> StateLayout:
        return cls(project_root / ".retl")

    @property
    def snapshots(self) -> Path:
        return self.root / "state"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def database(self) -> Path:
        """SQLite file with the run log and the dead letter queue (many processes at once)."""
        return self.root / "retl.db"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"
