"""100,000 rows into PostgreSQL: an incremental change set plans and lands exactly, and a run
killed with SIGKILL half way is finished by the next run without losing or duplicating a row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest
from run_harness import PostgresDb, RetlProject

pytestmark = pytest.mark.postgres

ROWS = 100_000


def make_source(project: RetlProject) -> None:
    project.warehouse(
        f"CREATE OR REPLACE TABLE src AS "
        f"SELECT i::INTEGER AS id, 'name ' || i AS name FROM range(1, {ROWS + 1}) t(i)"
    )


def differences(project: RetlProject, pg: PostgresDb) -> tuple[int, int]:
    """(rows of the source missing from the destination, rows of the destination not in the
    source), computed with EXCEPT both ways."""
    delivered = pg.arrow(f"SELECT id, name FROM {pg.schema}.contacts")
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{project.warehouse_path}' AS wh (READ_ONLY)")
        con.register("delivered", delivered)
        missing = con.execute(
            "SELECT count(*) FROM (SELECT id, name FROM wh.src EXCEPT SELECT id, name FROM delivered)"
        ).fetchall()[0][0]
        extra = con.execute(
            "SELECT count(*) FROM (SELECT id, name FROM delivered EXCEPT SELECT id, name FROM wh.src)"
        ).fetchall()[0][0]
    finally:
        con.close()
    return int(missing), int(extra)


def source_keys(project: RetlProject) -> set[str]:
    return {str(r[0]) for r in project.warehouse_rows("SELECT id FROM src")}


def test_100k_upsert_plans_and_delivers_exactly_the_change_set(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(on_removed="delete", allow_destructive=True)
    make_source(project)
    first = project.run_json()
    assert first["counts"]["create"] == ROWS
    assert differences(project, pg) == (0, 0)

    project.warehouse(
        "UPDATE src SET name = name || ' changed' WHERE id % 100 = 0",  # 1,000 changed
        "DELETE FROM src WHERE id % 200 = 1",  # 500 removed
        f"INSERT INTO src SELECT i, 'added ' || i FROM range({ROWS + 1}, {ROWS + 501}) t(i)",
    )
    plan = project.plan_counts()

    assert plan == {
        "create": 500,
        "update": 1000,
        "delete": 500,
        "unchanged": 98_500,
        "ignored": 0,
        "error": 0,
    }

    run = project.run_json()

    assert run["status"] == "success"
    assert {k: run["counts"][k] for k in ("create", "update", "delete", "rejected")} == {
        "create": 500,
        "update": 1000,
        "delete": 500,
        "rejected": 0,
    }
    assert differences(project, pg) == (0, 0)
    assert pg.count() == ROWS
    again = project.plan_counts()
    assert (again["create"], again["update"], again["delete"]) == (0, 0, 0)
    assert again["unchanged"] == ROWS
    assert project.state_keys() == source_keys(project)


def test_a_run_killed_half_way_is_finished_by_the_next_run(
    project: RetlProject, pg: PostgresDb
) -> None:
    batch_size = 2000
    project.write_sync(batch_size=batch_size)
    make_source(project)
    # Slow every statement a little so that the kill lands while batches are still going in.
    pg.execute(
        f"CREATE FUNCTION {pg.schema}.slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$"
    )
    pg.execute(
        f"CREATE TRIGGER slow AFTER INSERT ON {pg.schema}.contacts "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {pg.schema}.slow()"
    )
    process = subprocess.Popen(
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        delivered = 0
        while process.poll() is None and delivered < 5 * batch_size:
            time.sleep(0.005)
            delivered = pg.count()
        assert process.poll() is None, "the run ended before it could be killed: " + str(
            process.stderr.read() if process.stderr else ""
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    at_kill = {str(r[0]) for r in pg.rows(columns="id")}
    acknowledged = project.state_keys()
    assert 0 < len(at_kill) < ROWS
    # Only what the destination committed is acknowledged; at most the batches in flight are
    # not: one per delivery lane (PostgreSQL: 2) plus the acknowledgements being written (up
    # to 3: 2 queued, 1 committing).
    assert acknowledged <= at_kill
    assert len(at_kill) - len(acknowledged) <= batch_size * 5
    (killed,) = project.runs()
    assert killed["status"] == "running"
    assert project.plan_counts()["create"] == ROWS - len(acknowledged)

    pg.execute(f"DROP TRIGGER slow ON {pg.schema}.contacts")
    run = project.run_json()

    assert run["status"] == "success"
    # The batches committed after the last acknowledgement are read back from the delivery
    # ledger into state before the run plans: only what never landed is sent.
    assert run["counts"]["create"] == ROWS - len(at_kill)
    assert differences(project, pg) == (0, 0)
    assert project.state_keys() == source_keys(project)
    second, first = project.runs()
    assert second["id"] == run["id"]
    assert first["id"] == killed["id"]
    assert first["status"] == "failed"
    assert "interrupted" in first["error"]
    assert project.plan_counts()["unchanged"] == ROWS
