"""Which syncs are due under `retl run --all`: cron schedules, `after:` dependencies, manual.

One place decides, used by `retl run --all`, `retl status` and `Engine.run_many` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from croniter import croniter

from reverse_etl.config import Sync
from reverse_etl.state.runlog import RunLog, RunRecord

# Runs that did not try to deliver do not move a schedule on.
_NOT_ATTEMPTS = ("skipped", "refused")


def last_attempt(sync: Sync, run_log: RunLog) -> RunRecord | None:
    """The sync's last run that tried to deliver (skipped and refused runs do not count)."""
    for record in run_log.list(sync.name, limit=50):
        if record.status not in _NOT_ATTEMPTS:
            return record
    return None


def next_due(sync: Sync, run_log: RunLog, now: datetime | None = None) -> datetime | None:
    """When a cron sync is next due: its next fire time after the last attempt, or now when
    it never ran. None for manual and `after:` syncs (they have no time of their own)."""
    assert sync.config is not None
    cron = sync.config.schedule.cron
    if not cron:
        return None
    last = last_attempt(sync, run_log)
    if last is None:
        return now or datetime.now(UTC)
    fire: datetime = croniter(cron, last.started_at).get_next(datetime)
    return fire


def not_due_reason(
    sync: Sync,
    run_log: RunLog,
    succeeded_now: Mapping[str, bool],
    now: datetime | None = None,
) -> str | None:
    """None when the sync is due; otherwise why it is not (shown as a skip note).

    A cron sync is due when it never ran or its next fire time after the last attempt has
    passed. An `after:` sync is due when one of its dependencies succeeded in this invocation,
    or succeeded later than the sync's own last attempt. A manual sync runs only by name or
    with --force.
    """
    assert sync.config is not None
    schedule = sync.config.schedule
    now = now or datetime.now(UTC)
    if schedule.cron:
        due = next_due(sync, run_log, now)
        if due is None or due <= now:
            return None
        return f"not due until {due:%Y-%m-%d %H:%M} UTC ({schedule.cron})"
    if schedule.after:
        last = last_attempt(sync, run_log)
        for dependency in schedule.after:
            if succeeded_now.get(dependency):
                return None
            done = run_log.last_success(dependency)
            if done is not None and (last is None or done.started_at > last.started_at):
                return None
        return "waits for a new successful run of " + ", ".join(schedule.after)
    return "manual schedule: run it by name, or use --all --force"


def failed_dependency(sync: Sync, finished_now: Mapping[str, bool]) -> str | None:
    """Why a sync must not run: a dependency that ran in this invocation and did not succeed.
    `--force` ignores schedules, never failures."""
    assert sync.config is not None
    failed = [d for d in sync.config.schedule.after if finished_now.get(d) is False]
    if failed:
        return f"skipped: its dependency {', '.join(failed)} did not succeed in this run"
    return None
