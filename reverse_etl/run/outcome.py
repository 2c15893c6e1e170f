"""What a caller passes to a run (`RunOptions`) and gets back (`RunOutcome`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reverse_etl.plan.model import Plan
from reverse_etl.run.events import EventHook
from reverse_etl.state.runlog import RunRecord, RunTrigger


@dataclass
class RunOptions:
    dry_run: bool = False
    full_resync: bool = False
    role: str | None = None
    trigger: RunTrigger = "manual"
    only_dead_letters: bool = False
    # With `run_many`: run every selected sync, due or not (failed dependencies still skip).
    force: bool = False
    confirm: Callable[[Plan], bool] | None = None
    on_plan: Callable[[Plan], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    # Every event of the run as it happens (run/events.py): started, batches, retries, end.
    on_event: EventHook | None = None


@dataclass
class RunOutcome:
    """What happened to one sync.

    `status` is success|failed|interrupted|refused|skipped|planned (dry run). `counts` are the
    records applied (and rejected) by this run; what the plan meant to send is `plan.counts`.
    """

    sync: str
    status: str
    plan: Plan | None = None
    record: RunRecord | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"create": 0, "update": 0, "delete": 0, "rejected": 0}
    )
    error: str | None = None
    hint: str | None = None
    # Records in the sync's snapshot after the delivery (None when it did not get that far).
    state_records: int | None = None

    @property
    def planned(self) -> dict[str, int]:
        return self.plan.counts.as_dict() if self.plan else {}

    @property
    def sent(self) -> int:
        """Records the destination answered for (applied or rejected)."""
        return sum(self.counts.get(k, 0) for k in ("create", "update", "delete", "rejected"))

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": record.id if record else None,
            "sync": self.sync,
            "status": self.status,
            "counts": self.counts,
            "planned": self.planned,
            "started_at": record.started_at.isoformat() if record else None,
            "finished_at": record.finished_at.isoformat()
            if record and record.finished_at
            else None,
            "error": self.error,
            "hint": self.hint,
            "plan": self.plan.to_json() if self.plan else None,
        }
