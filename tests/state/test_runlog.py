"""The run log: one SQLite file that several retl processes read and write at once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.errors import StateError, UsageError
from reverse_etl.state import INTERRUPTED_ERROR, RunLog
from reverse_etl.state.database import SCHEMA_VERSION
from reverse_etl.state.runlog import new_run_id

REPO_ROOT = Path(__file__).resolve().parents[2]


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """Start `script` in a fresh interpreter with pipes on stdin and stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".retl" / "retl.db"


@pytest.fixture
def log(db: Path) -> RunLog:
    return RunLog(db)


def test_start_then_finish_records_outcome_counts_and_git_info(log: RunLog) -> None:
    started = log.start("crm", config_hash="abc", git_commit="f00d", git_dirty=True)
    assert started.status == "running"
    assert started.finished_at is None
    assert started.trigger == "manual"

    finished = log.finish(started.id, "success", {"create": 10, "update": 3, "rejected": 1})

    assert finished.id == started.id
    assert finished.status == "success"
    assert finished.counts == {"create": 10, "update": 3, "rejected": 1}
    assert finished.git_commit == "f00d" and finished.git_dirty is True
    assert finished.config_hash == "abc"
    assert finished.error is None
    assert finished.finished_at is not None and finished.finished_at >= finished.started_at
    assert finished.started_at.tzinfo is not None
    assert finished.started_at.utcoffset() == UTC.utcoffset(None)
    assert log.get(started.id) == finished


def test_the_database_and_its_folder_are_created_on_first_write(db: Path, log: RunLog) -> None:
    assert not db.parent.exists()
    log.start("crm", config_hash="abc", git_commit=None, git_dirty=False)
    assert db.is_file()


def test_reading_a_missing_run_log_creates_nothing(db: Path, log: RunLog) -> None:
    assert log.list() == []
    assert log.last("crm") is None
    assert log.get("2026") is None
    assert not db.parent.exists()


def test_failed_run_keeps_its_error(log: RunLog) -> None:
    run = log.start("crm", config_hash="abc", git_commit=None, git_dirty=False)
    failed = log.finish(run.id, "failed", {"create": 2}, error="destination unreachable")
    assert failed.status == "failed"
    assert failed.error == "destination unreachable"


def test_finishing_an_unknown_run_is_a_state_error(log: RunLog) -> None:
    log.start("crm", config_hash="abc", git_commit=None, git_dirty=False)
    with pytest.raises(StateError, match="not in the run log"):
        log.finish("20260101T000000Z-000000", "success", {})


def test_statuses_and_triggers_outside_the_contract_are_rejected(log: RunLog) -> None:
    with pytest.raises(StateError, match="trigger"):
        log.start("crm", "abc", None, False, trigger="cron")  # type: ignore[arg-type]
    run = log.start("crm", "abc", None, False)
    with pytest.raises(StateError, match="status"):
        log.finish(run.id, "running", {})
    with pytest.raises(StateError, match="status"):
        log.finish(run.id, "ok", {})  # type: ignore[arg-type]


def test_skipped_and_refused_runs_are_recorded_without_starting(log: RunLog) -> None:
    skipped = log.record("crm", "skipped", message="paused", trigger="schedule")
    refused = log.record(
        "crm", "refused", message="would delete 5000 records (max_deletes 1000)", config_hash="h"
    )
    assert skipped.status == "skipped" and skipped.message == "paused"
    assert skipped.trigger == "schedule"
    assert skipped.started_at == skipped.finished_at
    assert refused.config_hash == "h"
    assert [r.id for r in log.list("crm")] == [refused.id, skipped.id]


def test_run_ids_are_unique_and_sort_by_start_time() -> None:
    earlier = new_run_id(datetime(2026, 11, 24, 21, 15, 30, tzinfo=UTC))
    later = new_run_id(datetime(2026, 11, 24, 21, 15, 31, tzinfo=UTC))
    assert earlier.startswith("20261124T211530Z-")
    assert len(earlier) == len("20261124T211530Z-") + 6
    assert earlier < later
    # 6 hex digits collide within a second about 3% of the time at 1000 ids (the insert retries
    # then); 100 ids collide once in ~3000 runs of this test.
    assert len({new_run_id() for _ in range(100)}) == 100


def test_list_is_newest_first_filters_by_sync_and_limits(log: RunLog) -> None:
    ids = [log.record(sync, "success").id for sync in ["a", "b", "a", "b", "a"]]
    assert [r.id for r in log.list()] == ids[::-1]
    assert [r.id for r in log.list("a")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in log.list(limit=2)] == [ids[4], ids[3]]
    assert len(log.list(limit=None)) == 5
    assert log.list("nobody") == []


def test_last_and_last_success(log: RunLog) -> None:
    assert log.last("crm") is None and log.last_success("crm") is None
    ok = log.record("crm", "success")
    failed = log.record("crm", "failed", error="boom")
    log.record("other", "success")
    last = log.last("crm")
    last_success = log.last_success("crm")
    assert last is not None and last.id == failed.id
    assert last_success is not None and last_success.id == ok.id


def test_get_accepts_a_unique_prefix_of_a_run_id(log: RunLog) -> None:
    run = log.start("crm", "abc", None, False)
    assert log.get(run.id) == run
    found = log.get(run.id[:-2])
    assert found is not None and found.id == run.id
    assert log.get("19990101") is None


def test_get_with_a_prefix_of_several_runs_asks_for_more(log: RunLog) -> None:
    first = log.record("crm", "success")
    second = log.record("crm", "success")
    common = first.id
    while not second.id.startswith(common):
        common = common[:-1]
    with pytest.raises(UsageError, match="matches more than one run") as excinfo:
        log.get(common)
    assert excinfo.value.hint is not None and first.id in excinfo.value.hint


def test_get_treats_like_wildcards_literally(log: RunLog) -> None:
    log.record("crm", "success")
    assert log.get("%") is None
    assert log.get("_") is None


def test_to_dict_is_json_ready(log: RunLog) -> None:
    run = log.finish(log.start("crm", "abc", "c0ffee", False).id, "success", {"create": 1})
    data = json.loads(json.dumps(run.to_dict()))
    assert data["id"] == run.id
    assert data["status"] == "success"
    assert data["counts"] == {"create": 1}
    assert datetime.fromisoformat(data["started_at"]) == run.started_at


def test_a_run_left_running_by_a_killed_process_is_reported_then_marked_abandoned(
    db: Path, log: RunLog
) -> None:
    child = python(
        """
        import os, sys
        from reverse_etl.state import RunLog
        run = RunLog(sys.argv[1]).start("crm", "abc", None, False)
        print(run.id, flush=True)
        os._exit(9)  # dies without finishing the run
        """,
        str(db),
    )
    assert child.stdout is not None
    run_id = child.stdout.readline().strip()
    child.wait(timeout=30)
    other = log.start("other", "abc", None, False)

    stale = log.get(run_id)
    assert stale is not None and stale.status == "running"

    marked = log.mark_abandoned("crm")

    assert [r.id for r in marked] == [run_id]
    after = log.get(run_id)
    assert after is not None
    assert after.status == "failed"
    assert after.error == INTERRUPTED_ERROR
    assert after.finished_at is None  # when it ended is unknown
    assert log.mark_abandoned("crm") == []
    still_running = log.get(other.id)
    assert still_running is not None and still_running.status == "running"


def test_the_file_is_in_wal_mode_and_carries_its_schema_version(db: Path, log: RunLog) -> None:
    log.record("crm", "success")
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


def test_a_file_from_a_newer_retl_is_refused(db: Path, log: RunLog) -> None:
    log.record("crm", "success")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StateError, match="newer retl") as excinfo:
        RunLog(db).list()
    assert excinfo.value.hint is not None


def test_a_damaged_file_is_a_state_error_with_a_hint(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as excinfo:
        RunLog(db).list()
    assert excinfo.value.hint is not None and "move it aside" in excinfo.value.hint


def test_status_reads_while_another_process_holds_a_write_transaction(
    db: Path, log: RunLog
) -> None:
    committed = log.record("crm", "success")
    writer = python(
        """
        import sqlite3, sys
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET status = 'failed'")
        print("holding", flush=True)
        sys.stdin.readline()
        conn.execute("COMMIT")
        print("committed", flush=True)
        """,
        str(db),
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline().strip() == "holding"

        # The reader is not blocked and sees only committed data.
        seen = RunLog(db).list()
        assert [(r.id, r.status) for r in seen] == [(committed.id, "success")]

        # A second writer waits for the first instead of failing.
        started: list[str] = []
        thread = threading.Thread(
            target=lambda: started.append(log.start("other", "h", None, False).id)
        )
        thread.start()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "committed"
        thread.join(timeout=60)
        assert len(started) == 1
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    statuses = {r.sync: r.status for r in log.list()}
    assert statuses == {"crm": "failed", "other": "running"}


def test_runs_of_two_syncs_in_two_processes_write_at_once(db: Path, log: RunLog) -> None:
    script = """
        import sys
        from reverse_etl.state import RunLog
        log = RunLog(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(40):
            run = log.start(sys.argv[2], "h", None, False)
            log.finish(run.id, "success", {"create": i})
        """
    children = [python(script, str(db), sync) for sync in ("a", "b")]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:  # both start writing at the same moment
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=120) == 0
    runs = log.list(limit=None)
    assert len(runs) == 80
    assert {r.status for r in runs} == {"success"}
    assert len(log.list("a", limit=None)) == len(log.list("b", limit=None)) == 40


def test_planned_counts_are_kept_apart_from_applied_counts(log: RunLog) -> None:
    refused = log.record(
        "crm", "refused", message="would delete 11 records", planned={"delete": 11}
    )
    started = log.start("crm", config_hash=None, git_commit=None, git_dirty=False)
    finished = log.finish(
        started.id, "failed", {"create": 2}, planned={"create": 5}, error="destination down"
    )

    assert refused.counts == {} and refused.planned == {"delete": 11}
    assert finished.counts == {"create": 2} and finished.planned == {"create": 5}
    shown = log.get(refused.id)
    assert shown is not None and shown.to_dict()["planned"] == {"delete": 11}
    assert shown.to_dict()["counts"] == {}


def test_interrupted_is_a_status_a_run_can_end_with(log: RunLog) -> None:
    started = log.start("crm", config_hash=None, git_commit=None, git_dirty=False)
    assert log.finish(started.id, "interrupted", {"create": 190}).status == "interrupted"


def test_a_run_log_of_schema_version_1_gains_planned_counts_and_keeps_its_runs(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, sync TEXT NOT NULL, status TEXT NOT NULL, "
            "trigger TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, git_commit TEXT, "
            "git_dirty INTEGER NOT NULL DEFAULT 0, config_hash TEXT, "
            "counts TEXT NOT NULL DEFAULT '{}', error TEXT, message TEXT)"
        )
        conn.execute(
            "INSERT INTO runs (id, sync, status, trigger, started_at, finished_at, counts) VALUES "
            "('20260101T000000Z-abcdef', 'crm', 'success', 'manual', "
            "'2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:01.000000+00:00', "
            "'{\"create\": 3}')"
        )
        conn.execute(
            "CREATE TABLE dead_letters (sync TEXT NOT NULL, key TEXT NOT NULL, "
            "operation TEXT NOT NULL, record TEXT NOT NULL, error TEXT NOT NULL, run_id TEXT, "
            "first_failed_at TEXT NOT NULL, last_failed_at TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (sync, key)) WITHOUT ROWID"
        )
    conn.close()

    log = RunLog(db)
    old = log.list("crm")
    log.record("crm", "refused", planned={"delete": 4})

    assert [(r.counts, r.planned) for r in old] == [({"create": 3}, {})]
    assert [r.planned for r in log.list("crm")] == [{"delete": 4}, {}]


def test_errors_and_messages_are_stored_without_secrets(db: Path, log: RunLog) -> None:
    started = log.start("crm", config_hash=None, git_commit=None, git_dirty=False)
    log.finish(started.id, "failed", {}, error="cannot reach x://u@h/db?password=Leaky-1")
    log.record("crm", "refused", message="dsn host=h password=Leaky-2")

    assert [r.error or r.message for r in log.list("crm")] == [
        "dsn host=h password=***",
        "cannot reach x://u@h/db?password=***",
    ]
    assert b"Leaky" not in db.read_bytes()


def test_runs_json_shows_applied_and_planned_counts(
    local_project: Callable[..., Path], retl_cli: Callable[..., Any]
) -> None:
    local_project()
    assert retl_cli("run", "people").code == 0

    listed = retl_cli("runs", "--json").json()["runs"]
    shown = retl_cli("runs", "show", listed[0]["id"], "--json").json()

    for run in (listed[0], shown):
        assert run["counts"]["create"] == 1
        assert isinstance(run["planned"], dict)
