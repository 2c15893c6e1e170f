"""What keeps a run from doing damage: delete limits refuse before anything is sent, a dry run
and a plan send and write nothing, a run without a terminal never waits for an answer, and a
second run of a sync that is already running is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import pytest
from run_harness import PostgresDb, RetlProject

from reverse_etl.state.lock import SyncLock

pytestmark = pytest.mark.postgres

TEN = [(k, f"n{k}") for k in range(1, 11)]


def delivered_ten(project: RetlProject, pg: PostgresDb, **sync: object) -> None:
    project.write_sync(on_removed="delete", allow_destructive=True, **sync)
    project.set_source(TEN)
    assert project.run_json()["counts"]["create"] == 10
    assert pg.rows() == TEN


def state_file_bytes(project: RetlProject) -> bytes:
    return (project.state_dir / "contacts.duckdb").read_bytes()


# -- delete limits -----------------------------------------------------------------------------


def test_max_deletes_refuses_the_whole_run_before_anything_is_sent(
    project: RetlProject, pg: PostgresDb
) -> None:
    delivered_ten(project, pg, limits={"max_deletes": 3})
    before = state_file_bytes(project)
    project.set_source([(1, "changed"), *TEN[1:6]])  # 1 changed, 4 removed

    plan = project.plan_json()
    result = project.cli("run", "contacts", "--json")

    assert "max_deletes" in plan["refused"]
    assert result.code == 1
    (run,) = result.json()["runs"]
    assert run["status"] == "refused"
    assert "deletes 4 records" in run["error"] and "max_deletes = 3" in run["error"]
    assert (run["planned"]["update"], run["planned"]["delete"]) == (1, 4)
    assert (run["counts"]["update"], run["counts"]["delete"]) == (0, 0)  # refused: none applied
    assert pg.rows() == TEN  # not even the update went out
    assert state_file_bytes(project) == before
    assert project.runs()[0]["status"] == "refused"


def test_max_delete_ratio_refuses_removing_most_of_what_was_delivered(
    project: RetlProject, pg: PostgresDb
) -> None:
    delivered_ten(project, pg)  # max_delete_ratio defaults to 0.5
    project.set_source(TEN[:4])  # 6 of 10 removed

    run = project.run_json(code=1)

    assert run["status"] == "refused"
    assert "max_delete_ratio" in run["error"]
    assert run["planned"]["delete"] == 6
    assert run["counts"]["delete"] == 0
    assert pg.rows() == TEN


def test_an_empty_source_is_refused_rather_than_deleting_everything(
    project: RetlProject, pg: PostgresDb
) -> None:
    delivered_ten(project, pg)
    project.set_source([])

    run = project.run_json(code=1)

    assert run["status"] == "refused"
    assert pg.rows() == TEN


def test_a_raised_max_delete_ratio_lets_the_deletes_through(
    project: RetlProject, pg: PostgresDb
) -> None:
    delivered_ten(project, pg, limits={"max_delete_ratio": 0.7})
    project.set_source(TEN[:4])

    run = project.run_json()

    assert run["counts"]["delete"] == 6
    assert pg.rows() == TEN[:4]


def test_max_deletes_also_limits_mode_delete(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync(
        mode="delete", allow_destructive=True, mapping={"id": "id"}, limits={"max_deletes": 3}
    )
    pg.execute(f"INSERT INTO {pg.schema}.contacts SELECT k, 'n' || k FROM generate_series(1, 10) k")
    project.set_source(TEN[:5])

    run = project.run_json(code=1)

    assert run["status"] == "refused"
    assert run["planned"]["delete"] == 5
    assert run["counts"]["delete"] == 0
    assert pg.count() == 10


def test_declined_confirmation_deletes_nothing(project: RetlProject, pg: PostgresDb) -> None:
    delivered_ten(project, pg)
    project.set_source(TEN[:8])
    asked = []

    outcome = project.run(confirm=lambda plan: asked.append(plan.counts.delete) or False)

    assert asked == [2]
    assert outcome.status == "refused"
    assert pg.rows() == TEN


def test_a_run_with_deletes_and_no_terminal_asks_nothing(
    project: RetlProject, pg: PostgresDb
) -> None:
    delivered_ten(project, pg)
    project.set_source(TEN[:8])

    # As from cron: no terminal on stdin, no --yes.
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "reverse_etl",
            "run",
            "contacts",
            "--project-dir",
            str(project.root),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )

    assert process.returncode == 0, process.stderr
    assert "[y/N]" not in process.stderr
    assert pg.rows() == TEN[:8]


# -- nothing sent, nothing written -------------------------------------------------------------


def test_dry_run_sends_and_records_nothing(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source(TEN)

    run = project.run_json("contacts", "--dry-run")

    assert run["status"] == "planned"
    assert run["planned"]["create"] == 10
    assert run["counts"]["create"] == 0
    assert pg.rows() == []
    assert not (project.state_dir / "contacts.duckdb").exists()
    assert project.runs() == []


def test_dry_run_after_a_run_changes_nothing(project: RetlProject, pg: PostgresDb) -> None:
    delivered_ten(project, pg)
    before = state_file_bytes(project)
    project.set_source([(1, "changed"), *TEN[1:9]])

    result = project.cli("run", "contacts", "--dry-run")

    assert result.code == 0, result.output
    assert "1 update" in result.out and "1 delete" in result.out
    assert pg.rows() == TEN
    assert state_file_bytes(project) == before
    assert len(project.runs()) == 1


def test_plan_never_writes(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source(TEN)

    plan = project.cli("plan", "contacts")
    preview = project.cli("preview", "contacts")

    assert plan.code == 0 and preview.code == 0, plan.output + preview.output
    assert not project.state_dir.exists() or not any(project.state_dir.iterdir())
    assert pg.rows() == []

    project.run_json()
    project.set_source([(1, "changed")])
    path = project.state_dir / "contacts.duckdb"
    before = (path.read_bytes(), path.stat().st_mtime_ns)

    assert project.plan_counts()["update"] == 1
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert not path.with_name(path.name + ".wal").exists()
    assert pg.rows() == TEN


def test_state_holds_keys_and_hashes_never_values(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source([(1, "a very recognisable name")])
    project.run_json()

    con = duckdb.connect(str(project.state_dir / "contacts.duckdb"), read_only=True)
    try:
        columns = [r[0] for r in con.execute("DESCRIBE snapshot").fetchall()]
        (row,) = con.execute("SELECT key, hash FROM snapshot").fetchall()
    finally:
        con.close()
    assert columns == ["key", "hash", "synced_at", "dest_id"]  # dest_id: the id a destination gave
    assert row[0] == "1" and len(row[1]) == 32
    assert b"recognisable" not in (project.state_dir / "contacts.duckdb").read_bytes()


# -- locks -------------------------------------------------------------------------------------


def test_a_second_run_of_the_same_sync_is_refused_naming_the_holder(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync()
    project.set_source(TEN)
    locks = project.root / ".retl" / "locks"

    with SyncLock(locks, "contacts", command="retl run contacts (held by the test)"):
        result = project.cli("run", "contacts", "--json")

    assert result.code == 1
    (run,) = result.json()["runs"]
    assert run["status"] == "refused"
    assert f"pid {os.getpid()}" in run["error"]
    assert "held by the test" in run["error"]
    assert "retl unlock contacts" in run["hint"]
    assert pg.rows() == []
    assert project.runs()[0]["status"] == "refused"
    # Once the holder lets go, the sync runs.
    assert project.run_json()["counts"]["create"] == 10


def test_the_lock_is_released_when_a_run_ends(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source(TEN)

    project.run_json()

    with SyncLock(project.root / ".retl" / "locks", "contacts") as lock:
        assert lock.held
