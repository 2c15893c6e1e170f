"""The Plan: what a run will do, computed once and then only read (by renderers and the runner)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reverse_etl.types import Action

OPERATIONS = ("create", "update", "delete")


@dataclass
class PlanCounts:
    create: int = 0
    update: int = 0
    delete: int = 0
    unchanged: int = 0
    error: int = 0

    @property
    def to_send(self) -> int:
        return self.create + self.update + self.delete

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class RowError:
    """A source row that cannot be sent (null or duplicate primary key)."""

    key: str | None
    rows: int
    message: str


@dataclass
class Plan:
    """Counts first, samples after, and why a run would be refused (if it would)."""

    sync: str
    mode: str
    destination: str
    object: str
    action: dict[str, Action]
    counts: PlanCounts
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    row_errors: list[RowError] = field(default_factory=list)
    source_rows: int = 0
    snapshot_records: int = 0
    removed_deletes: int = 0
    full_resync: bool = False
    incremental_from: str | None = None
    config_changed: bool = False
    refusal: str | None = None
    refusal_hint: str | None = None

    @property
    def destructive(self) -> bool:
        return self.counts.delete > 0

    @property
    def empty(self) -> bool:
        return self.counts.to_send == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.sync,
            "mode": self.mode,
            "destination": self.destination,
            "object": self.object,
            "counts": self.counts.as_dict(),
            "samples": self.samples,
            "row_errors": [asdict(e) for e in self.row_errors],
            "source_rows": self.source_rows,
            "snapshot_records": self.snapshot_records,
            "full_resync": self.full_resync,
            "incremental_from": self.incremental_from,
            "config_changed": self.config_changed,
            "refused": self.refusal,
        }
