"""Which syncs are due under `retl run --all`: cron schedules, `after:` dependencies, manual."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from croniter import croniter

from reverse_etl.config import Sync
from reverse_etl.state.runlog import RunLog


def not_due_reason(
    sync: Sync,
    run_log: RunLog,
    succeeded_now: Mapping[str, bool],
    now: datetime | None = None,
) -> str | None:
    """None when the sync is due; otherwise why it is not (shown as a skip note).

    A cron sync is due when it never ran or its next fire time after the last run has passed.
    An `after:` sync is due when one of its dependencies succeeded in this invocation, or
    succeeded later than the sync's own last run. A manual sync runs only by name or --force.
    """
    assert sync.config is not None
    schedule = sync.config.schedule
    now = now or datetime.now(UTC)
    last = run_log.last(sync.name)
    last_start = last.started_at if last and last.status not in ("skipped", "refused") else None
    if schedule.cron:
        if last_start is None:
            return None
        next_fire: datetime = croniter(schedule.cron, last_start).get_next(datetime)
        if next_fire <= now:
            return None
        return f"not due until {next_fire:%Y-%m-%d %H:%M} UTC ({schedule.cron})"
    if schedule.after:
        for dependency in schedule.after:
            if succeeded_now.get(dependency):
                return None
            done = run_log.last_success(dependency)
            if done is not None and (last_start is None or done.started_at > last_start):
                return None
        return "waits for a new successful run of " + ", ".join(schedule.after)
    return "manual schedule: run it by name, or use --all --force"
