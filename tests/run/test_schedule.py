"""`retl run --all` runs what is due: cron schedules, `after:` dependencies, never manual syncs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reverse_etl.config import load_project
from reverse_etl.run.schedule import not_due_reason
from reverse_etl.state.runlog import RunLog

RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  files:
    type: file
    path: out
"""
SYNC = """warehouse: memory
source:
  sql: select 1 as id
destination:
  name: files
  object: {name}
mode: insert
primary_key: id
mapping:
  id: id
schedule: {schedule}
"""


@pytest.fixture
def project(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    schedules = {
        "hourly": '"0 * * * *"',
        "follower": "{after: [hourly]}",
        "by_hand": "manual",
    }
    for name, schedule in schedules.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(SYNC.format(name=name, schedule=schedule))
    loaded = load_project(tmp_path, env={})
    assert not loaded.all_problems
    return loaded


def test_a_cron_sync_that_never_ran_is_due(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert not_due_reason(project.syncs["hourly"], RunLog(tmp_path / "r.db"), {}) is None


def test_a_cron_sync_is_not_due_before_its_next_fire_time(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = RunLog(tmp_path / "r.db")
    run = log.start("hourly", None, None, False)
    log.finish(run.id, "success", {})
    start = run.started_at
    next_hour = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    reason = not_due_reason(project.syncs["hourly"], log, {}, now=next_hour - timedelta(seconds=1))
    assert reason is not None and "not due until" in reason
    assert not_due_reason(project.syncs["hourly"], log, {}, now=next_hour) is None


def test_an_after_sync_is_due_when_its_dependency_succeeded_in_this_invocation(
    project,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    log = RunLog(tmp_path / "r.db")
    follower = project.syncs["follower"]
    assert not_due_reason(follower, log, {"hourly": False}) is not None
    assert not_due_reason(follower, log, {"hourly": True}) is None


def test_an_after_sync_is_due_once_per_new_success_of_its_dependency(
    project, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    log = RunLog(tmp_path / "r.db")
    follower = project.syncs["follower"]
    dependency = log.start("hourly", None, None, False)
    log.finish(dependency.id, "success", {})
    assert not_due_reason(follower, log, {}) is None
    own = log.start("follower", None, None, False)
    log.finish(own.id, "success", {})
    assert not_due_reason(follower, log, {}, now=datetime.now(UTC)) is not None


def test_a_manual_sync_is_never_due(project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reason = not_due_reason(project.syncs["by_hand"], RunLog(tmp_path / "r.db"), {})
    assert reason is not None and "--force" in reason
