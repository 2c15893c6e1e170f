"""What a run reports while it happens: one `RunEvent` per thing an operator may watch for.

The engine calls `RunOptions.on_event` with each of them, from the thread that runs the sync
(several syncs may report at once, so a hook that writes somewhere must lock). `retl
--log-format json` writes `to_json()` of every event as one line on stderr; a Python caller can
do what it likes with them. Every text in an event is redacted: an event never holds a secret.

Events, with their `data` keys:
- `run_started`: trigger, dry_run, git_commit
- `batch_acknowledged`: operation, records, accepted, rejected, retry_later, sent, total, counts
- `retry`: what (`requests` a connector retried after 429/5xx/timeouts, or `records` the
  destination asked to send again later), count, and wait_seconds for records
- `rejection_summary`: rejected, top_errors [{error, count}]
- `run_finished`: status, counts, planned, duration_seconds, error, hint
- `alert_sent` / `alert_failed`: channel (and error, for a failed one)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from reverse_etl.redact import redact_data

EventLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class RunEvent:
    """One event of one sync's run; `run_id` is None for a dry run or a run never started."""

    event: str
    sync: str
    run_id: str | None
    level: EventLevel = "info"
    data: dict[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        """The event as one flat JSON object: ts, level, event, run_id, sync, then its data."""
        document: dict[str, Any] = {
            "ts": self.ts.astimezone(UTC).isoformat(timespec="milliseconds"),
            "level": self.level,
            "event": self.event,
            "run_id": self.run_id,
            "sync": self.sync,
        }
        for key, value in self.data.items():
            document.setdefault(key, value)
        return dict(redact_data(document))


EventHook = Callable[[RunEvent], None]


__all__ = ["EventHook", "EventLevel", "RunEvent"]
