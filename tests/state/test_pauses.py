"""Operational pauses in `.retl/retl.db` (state/pauses.py): who, when and why, redacted, one per
sync; and the run log's snapshot size per run that came with the same schema version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reverse_etl.errors import UsageError
from reverse_etl.state import RunLog
from reverse_etl.state.pauses import PauseStore


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".retl" / "retl.db"


def test_a_pause_is_kept_until_resumed_and_a_second_pause_replaces_the_first(db: Path) -> None:
    store = PauseStore(db)

    first = store.pause("crm", "incident 1", by="ann")
    second = store.pause("crm", "incident 2", by="bob")

    assert store.get("crm") == second and second.at >= first.at
    assert list(store.all()) == ["crm"]
    assert store.resume("crm") == second
    assert store.get("crm") is None and store.resume("crm") is None


def test_reasons_are_kept_on_one_line_without_secrets(db: Path) -> None:
    store = PauseStore(db)

    pause = store.pause("crm", "api down,\n  see https://u:Hunter-22@h/x", by="ann")

    assert pause.reason == "api down, see https://u:***@h/x"
    assert store.get("crm") == pause


def test_a_blank_reason_is_refused(db: Path) -> None:
    with pytest.raises(UsageError, match="needs a reason"):
        PauseStore(db).pause("crm", " \n ", by="ann")


def test_reading_pauses_of_a_project_never_run_creates_no_file(db: Path) -> None:
    assert PauseStore(db).all() == {}
    assert not db.exists()


def test_a_run_log_of_schema_version_2_gains_pauses_and_state_records(db: Path) -> None:
    log = RunLog(db)
    old = log.start("crm", config_hash=None, git_commit=None, git_dirty=False)
    log.finish(old.id, "success", {"create": 3})
    conn = sqlite3.connect(db)
    with conn:  # back to what retl with schema version 2 wrote
        conn.execute("DROP TABLE pauses")
        conn.execute("DROP TABLE in_doubt")
        conn.execute("ALTER TABLE runs DROP COLUMN state_records")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()

    reopened = RunLog(db)
    new = reopened.start("crm", config_hash=None, git_commit=None, git_dirty=False)
    reopened.finish(new.id, "success", {"update": 1}, state_records=3)

    assert [r.state_records for r in reopened.list("crm")] == [3, None]
    assert PauseStore(db).pause("crm", "why", by="ann").by == "ann"
