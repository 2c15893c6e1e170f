"""Issue 17: a shared state store that goes away in the middle of a run ends that run cleanly.

The project keeps its state in a PostgreSQL database of its own (`state: {backend: postgres}`);
the destination is a table of the test database. One batch of the run waits in the destination
(a trigger) after earlier batches were acknowledged; meanwhile every connection to the state
database is terminated and the database refuses new ones. When the batch goes on, the run fails
with one message saying the state store cannot be reached (no traceback, no password), and once
the store is back the next run delivers exactly what is missing: the destination equals the
source, nothing twice, and the interrupted run is in `retl runs` as failed or abandoned.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from run_harness import PostgresDb
from test_shared_state import (
    Machine,
    SharedState,
    assert_exactly_once,
    run_once_free,
    runs_of,
    slow_down,
)

pytestmark = pytest.mark.postgres

PASSWORD = "s3cret-state-pw"  # trust auth ignores it; it must never be printed
ROWS = 200
BATCH = 5


@pytest.fixture
def state_db(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A database of its own for the state store: (its name, a URL to it with a password)."""
    name = f"retl_lost_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres_url)
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    yield name, urlunsplit((parts.scheme, netloc, f"/{name}", "", ""))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def keyed_sync(shared: SharedState) -> tuple[Machine, Machine]:
    """Two copies of a sync of ROWS rows into a table keyed by `id`, BATCH rows a batch, each
    batch taking 0.2 s more in the destination, and a gate that, once closed, holds the next
    batch in the destination (its rows not committed) until it is opened again."""
    schema = shared.dest.schema
    shared.dest.execute(f"CREATE TABLE {schema}.people (id int PRIMARY KEY, name text)")
    slow_down(shared.dest, "people", 0.2)
    shared.dest.execute(f"CREATE TABLE {schema}.gate (closed boolean)")
    shared.dest.execute(f"INSERT INTO {schema}.gate VALUES (false)")
    shared.dest.execute(
        f"CREATE FUNCTION {schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF (SELECT closed FROM {schema}.gate) THEN "
        f"PERFORM set_config('application_name', 'held {schema}', true); END IF; "
        f"WHILE (SELECT closed FROM {schema}.gate) LOOP PERFORM pg_sleep(0.02); END LOOP; "
        "RETURN NULL; END $$"
    )
    shared.dest.execute(
        f"CREATE TRIGGER hold AFTER INSERT ON {schema}.people "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.hold()"
    )
    shared.sync("people", "people", mode="insert", batch_size=BATCH)
    shared.warehouse(
        f"CREATE TABLE people AS SELECT i::INTEGER AS id, 'person ' || i AS name "
        f"FROM range(1, {ROWS + 1}) t(i)"
    )
    return shared.machine(), shared.machine()


def gate(dest: PostgresDb, closed: bool) -> None:
    dest.execute(f"UPDATE {dest.schema}.gate SET closed = %s", [closed])


def held(dest: PostgresDb) -> bool:
    """Whether a batch waits at the closed gate."""
    row = dest.conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        [f"held {dest.schema}"],
    ).fetchone()
    return row is not None and row[0] > 0


def store_goes_away(admin: psycopg.Connection[tuple[object, ...]], name: str) -> int:
    """No one (superusers included) may connect to the state database any more, and every
    connection to it is closed; returns how many were."""
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    row = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        [name],
    ).fetchone()
    assert row is not None
    return int(row[0])


def acknowledged(state_url: str, schema: str) -> int:
    """Records the running run's progress in the run log says were created."""
    with psycopg.connect(state_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", [f'"{schema}".runs']).fetchone() == (None,):
            return 0  # the run has not made the store's tables yet
        row = conn.execute(
            f'SELECT counts FROM "{schema}".runs WHERE finished_at IS NULL'
        ).fetchone()
    return 0 if row is None or not row[0] else int(json.loads(row[0]).get("create", 0))


def test_a_state_store_lost_mid_run_fails_the_run_cleanly_and_the_next_run_completes_it(
    tmp_path: Path, postgres_url: str, pg_schema: str, state_db: tuple[str, str]
) -> None:
    name, state_url = state_db
    shared = SharedState(tmp_path, postgres_url, "retl_state", PostgresDb(postgres_url, pg_schema))
    first, second = keyed_sync(shared)
    for machine in (first, second):
        machine.env["RETL_STATE_URL"] = state_url
    admin = psycopg.connect(postgres_url, autocommit=True)
    process = first.start("run", "people")
    try:
        deadline = time.monotonic() + 60
        while acknowledged(state_url, "retl_state") < BATCH:  # the run log holds a batch
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run acknowledged nothing"
            time.sleep(0.05)
        gate(shared.dest, closed=True)
        while not held(shared.dest):  # its next batch waits in the destination
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no batch reached the gate"
            time.sleep(0.02)
        closed = store_goes_away(admin, name)
        gate(shared.dest, closed=False)
        out, err = process.communicate(timeout=90)
    finally:
        gate(shared.dest, closed=False)  # a held insert never outlives the test
        if process.poll() is None:
            process.kill()
            process.wait()
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')  # the store is back
        admin.close()

    assert closed >= 1  # the run held its lock on a connection to the store
    output = out + err
    message = " ".join(output.split())
    assert process.returncode == 1, output
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert "could not record delivered records in state" in message, message
    assert "lost the connection to the state database" in message, message
    assert "fix the state store (server reachable," in message, message
    landed = shared.dest.count("people")
    assert BATCH <= landed < ROWS, message

    result = run_once_free(second, "people")

    (run,) = runs_of(result).values()
    assert run["status"] == "success", result.output
    assert_exactly_once(shared, "people", "people")
    assert shared.dest.count("people") == ROWS
    history = second.retl("runs", "people", "--json")
    assert history.code == 0, history.output
    earlier = [r for r in json.loads(history.out)["runs"] if r["id"] != run["id"]]
    assert [r["status"] for r in earlier] in (["failed"], ["abandoned"]), history.out
    assert earlier[0]["counts"]["create"] >= BATCH, earlier  # what the store kept of it
    assert PASSWORD not in history.output + result.output
    shared.dest.close()
