"""Two runs of one sync that overlap with no shared lock (issue 15, case 6): machine A's run
is held mid-delivery, machine B runs the same insert-mode sync to the end, then A goes on. B
claimed the target before it replayed A's markers and planned, so A's next batch is rolled
back and A stops with the take-over error; every record lands exactly once.

How A is held, deterministically: a statement trigger on the destination table, BEFORE INSERT
(so the held transaction has inserted nothing and blocks no one), makes the first statement
that finds HOLD_AT rows in the table wait for an advisory lock the test holds. Only the first:
a sequence hands out the turn, so B's statements pass.

Shared state (`state.backend: warehouse` on PostgreSQL, two project folders, so two local
locks): exactly once for keyed and keyless tables, re-runs included. Separate local states:
exactly once for the overlap itself (B replays A's unforgotten markers); a later re-run of A
does not know what B delivered, so only a key keeps it from repeating records (README)."""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RETL = [sys.executable, "-m", "reverse_etl"]
ROWS = 3000
BATCH_SIZE = 200
HOLD_AT = 1000  # A is held at its first statement once this many rows landed


@dataclass
class Setup:
    conn: psycopg.Connection[tuple[Any, ...]]
    schema: str
    table: str  # schema-qualified destination table
    a: Path
    b: Path
    lock: tuple[int, int]

    def ids(self) -> list[int]:
        return sorted(int(r[0]) for r in self.conn.execute(f"SELECT id FROM {self.table}"))


def start(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [*RETL, "run", "events", "--json", "--project-dir", str(root)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    """Exit code, the run's entry of `--json`, and stderr."""
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"retl still running: {err}") from None
    try:
        (run,) = json.loads(out)["runs"]
    except (ValueError, KeyError) as exc:
        raise AssertionError(f"no run document: {out}{err}") from exc
    return process.returncode, run, err


def run(root: Path) -> tuple[int, dict[str, Any], str]:
    return finish(start(root))


def hold(setup: Setup) -> None:
    k1, k2 = setup.lock
    s = setup.schema
    setup.conn.execute(f"CREATE SEQUENCE {s}.turn")
    setup.conn.execute(
        f"CREATE FUNCTION {s}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF (SELECT count(*) FROM {setup.table}) >= {HOLD_AT} THEN "
        f"IF nextval('{s}.turn') = 1 THEN PERFORM pg_advisory_xact_lock({k1}, {k2}); END IF; "
        "END IF; RETURN NULL; END $$"
    )
    setup.conn.execute(
        f"CREATE TRIGGER hold BEFORE INSERT ON {setup.table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {s}.hold()"
    )


def wait_until_held(setup: Setup, process: subprocess.Popen[str]) -> None:
    k1, k2 = setup.lock
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        waiting = setup.conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = %s AND objid = %s",
            (k1, k2),
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.05)
    out, err = process.communicate(timeout=30)
    raise AssertionError(f"run A was never held: {out}{err}")


Result = tuple[int, dict[str, Any], str]  # exit code, the run's `--json` entry, stderr


def held_while_b_runs(setup: Setup) -> tuple[Result, Result]:
    """A starts and is held after HOLD_AT rows; B runs to its end; then A goes on. Returns
    A's and B's results."""
    hold(setup)
    k1, k2 = setup.lock
    setup.conn.execute("SELECT pg_advisory_lock(%s, %s)", (k1, k2))
    a = start(setup.a)
    try:
        wait_until_held(setup, a)
        b = run(setup.b)
        setup.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (k1, k2))
        return finish(a), b
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()


def overlap(setup: Setup) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A held while B runs to success; A then stops. Returns the documents of A's and B's
    runs and A's stderr."""
    (code_a, run_a, err_a), (code_b, run_b, err_b) = held_while_b_runs(setup)
    assert code_b == 0, (run_b, err_b)
    assert code_a == 1, (run_a, err_a)
    return run_a, run_b, err_a


def assert_exactly_once(setup: Setup) -> None:
    ids = setup.ids()
    twice = [k for k, n in collections.Counter(ids).items() if n > 1]
    assert not twice, f"{len(twice)} records twice, e.g. {twice[:5]}"
    assert ids == list(range(1, ROWS + 1))


def assert_taken_over(run_a: dict[str, Any], run_b: dict[str, Any]) -> None:
    """A stopped with the take-over error; its undelivered records were neither counted nor
    rejected; A's and B's creates add up to the source."""
    assert run_a["status"] == "failed"
    error = run_a["error"]
    assert "another run of sync 'events' took over target pg:" in error, error
    assert "this run stopped without delivering more; its delivered batches are in state" in error
    assert "the rest not sent" in error
    assert run_a["counts"].get("rejected", 0) == 0
    assert run_a["counts"].get("in_doubt", 0) == 0
    assert HOLD_AT <= run_a["counts"]["create"] < ROWS
    assert run_b["status"] == "success"
    assert run_b["counts"]["create"] <= ROWS - HOLD_AT


def dead_letters(root: Path) -> list[Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [*RETL, "dlq", "events", "--json", "--project-dir", str(root)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    letters = json.loads(result.stdout)["dead_letters"]
    assert isinstance(letters, list)
    return letters


def new_lock() -> tuple[int, int]:
    return random.randrange(1, 1 << 30), random.randrange(1, 1 << 30)


def make_table(conn: psycopg.Connection[tuple[Any, ...]], table: str, keyed: bool) -> None:
    key = " PRIMARY KEY" if keyed else ""
    conn.execute(f"CREATE TABLE {table} (id integer{key}, name text)")


def sync_document(source: str, table: str, keyed: bool) -> dict[str, Any]:
    return {
        "warehouse": "wh",
        "source": {"sql": source},
        "destination": {"name": "pg", "object": table},
        "mode": "insert",
        "primary_key": "id",
        "batch_size": BATCH_SIZE,
        "mapping": {"id": "id", "name": "name"},
    }


# --------------------------------------------------------------- shared state (the case)


@pytest.fixture
def shared(
    request: pytest.FixtureRequest, postgres_url: str, pg_schema: str, tmp_path: Path
) -> Iterator[Setup]:
    """Two project folders (two machines, each with its own `.retl/` and lock) whose state is
    the same warehouse schema."""
    keyed = request.param == "keyed"
    state_schema = f"{pg_schema}_state"
    conn = psycopg.connect(postgres_url, autocommit=True)
    table = f"{pg_schema}.events"
    conn.execute(
        f"CREATE TABLE {pg_schema}.src AS SELECT g AS id, 'name ' || g AS name "
        f"FROM generate_series(1, {ROWS}) g"
    )
    make_table(conn, table, keyed)
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        (root / "syncs").mkdir(parents=True)
        config = {
            "version": 1,
            "warehouses": {"wh": {"url": postgres_url}},
            "destinations": {"pg": {"type": "postgres", "url": postgres_url}},
            "state": {"backend": "warehouse", "warehouse": "wh", "schema": state_schema},
        }
        (root / "retl.yml").write_text(yaml.safe_dump(config))
        document = sync_document(f"select * from {pg_schema}.src", table, keyed)
        (root / "syncs" / "events.yml").write_text(yaml.safe_dump(document))
    try:
        yield Setup(conn, pg_schema, table, roots[0], roots[1], new_lock())
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {state_schema} CASCADE")
        conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("shared", ["keyed", "keyless"], indirect=True)
def test_two_machines_sharing_warehouse_state_never_overlap_and_deliver_every_record_once(
    shared: Setup, clean_env: None
) -> None:
    """Shared state on a PostgreSQL warehouse holds the sync's lock too: while A delivers, B is
    refused and names A; once A is done, neither machine has anything left to send. (Runs that
    do overlap, with locks that are not shared, are the local-state tests below: the claim.)"""
    (code_a, run_a, err_a), (code_b, run_b, err_b) = held_while_b_runs(shared)

    assert code_b == 1 and run_b["status"] == "refused", (run_b, err_b)
    refusal = " ".join(f"{run_b.get('error')} {err_b}".split())
    assert "sync 'events' is being run by pid " in refusal and "(retl run events)" in refusal
    assert run_b["counts"]["create"] == 0
    assert code_a == 0 and run_a["status"] == "success", (run_a, err_a)
    assert run_a["counts"]["create"] == ROWS
    assert_exactly_once(shared)
    # Both machines see one state: a run on either has nothing left to send.
    for root in (shared.a, shared.b):
        code, again, err = run(root)
        assert code == 0, (again, err)
        assert again["counts"]["create"] == 0
        assert dead_letters(root) == []
    assert_exactly_once(shared)
    state = shared.conn.execute(
        f"SELECT count(*) FROM {shared.schema}_state.retl_snapshot WHERE sync = 'events'"
    ).fetchone()
    assert state == (ROWS,)


# ------------------------------------------------------------------------ separate local states


@pytest.fixture
def local(
    request: pytest.FixtureRequest,
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    """Two copies of one project folder, each with its own DuckDB warehouse file (a copy) and
    its own local state and lock."""
    keyed = request.param == "keyed"
    monkeypatch.setenv("PG_URL", postgres_url)
    conn = psycopg.connect(postgres_url, autocommit=True)
    table = f"{pg_schema}.events"
    make_table(conn, table, keyed)
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {"pg": {"type": "postgres", "url": "${PG_URL}"}},
    }
    (a / "retl.yml").write_text(yaml.safe_dump(config))
    document = sync_document("select * from src", table, keyed)
    (a / "syncs" / "events.yml").write_text(yaml.safe_dump(document))
    import duckdb

    with duckdb.connect(str(a / "wh.duckdb")) as con:
        con.execute(
            f"CREATE TABLE src AS SELECT i::INTEGER AS id, 'name ' || i AS name "
            f"FROM range(1, {ROWS + 1}) t(i)"
        )
    shutil.copytree(a, b)
    try:
        yield Setup(conn, pg_schema, table, a, b, new_lock())
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("local", ["keyed", "keyless"], indirect=True)
def test_overlapping_runs_with_separate_local_states_deliver_every_record_once(
    local: Setup, clean_env: None
) -> None:
    run_a, run_b, _ = overlap(local)

    # B replayed what A had committed (A's markers were still there) and sent the rest.
    assert_taken_over(run_a, run_b)
    assert run_a["counts"]["create"] + run_b["counts"]["create"] == ROWS
    assert_exactly_once(local)
    code, again, err = run(local.b)
    assert code == 0, (again, err)
    assert again["counts"]["create"] == 0
    assert_exactly_once(local)


@pytest.mark.postgres
@pytest.mark.parametrize("local", ["keyed"], indirect=True)
def test_a_later_run_from_a_state_that_missed_the_other_machines_records_repeats_no_key(
    local: Setup, clean_env: None
) -> None:
    """A's state never learns what B delivered: A's next run sends those records again as
    new. A key refuses them (dead letters), so no record lands twice; a keyless table needs
    shared state (README)."""
    _, run_b, _ = overlap(local)

    code, again, _ = run(local.a)

    # Every one is refused by the key (the run stops once the rejections pass the limit).
    assert code == 1 and again["counts"]["create"] == 0
    assert 0 < again["counts"]["rejected"] <= run_b["counts"]["create"]
    assert_exactly_once(local)
