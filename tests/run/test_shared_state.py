"""Issue 17 end to end: several copies of one project (separate folders, no shared `.retl/`,
each with its own copy of the DuckDB warehouse) keep everything in one PostgreSQL state store
(`state: {backend: postgres}`) and deliver into one PostgreSQL database.

- Two machines start `retl run --all` at the same moment, round after round: every sync runs
  once per round in total (the other copy is refused naming the holder, or finds it not due),
  and the destination equals the source.
- A third, fresh copy sees the others' runs, schedules, pauses and dead letters, and runs only
  what is due.
- A run SIGKILLed mid-delivery, or whose lease `retl unlock` takes over from another copy,
  leaves nothing twice: the next run from another copy sends exactly what is missing.

Every retl is a real process (`python -m reverse_etl`). The suite runs ROUNDS rounds; the
issue's check is 20: RETL_TEST_ROUNDS=20 pytest tests/run/test_shared_state.py
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import yaml
from run_harness import CliResult, PostgresDb

from reverse_etl.state.database import parse_timestamp, timestamp_text
from reverse_etl.state.postgres import PostgresStore
from reverse_etl.state.runlog import RunLog

pytestmark = pytest.mark.postgres

ROUNDS = int(os.environ.get("RETL_TEST_ROUNDS", "5"))
CHECKOUT = Path(__file__).resolve().parents[2]
YEARLY = "0 0 1 1 *"  # due again after `a_year_passes`, never in between


@dataclass
class Machine:
    """One copy of the project: its own folder, its own warehouse file, no `.retl/`."""

    root: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "reverse_etl", *args, "--project-dir", str(self.root)]

    def retl(self, *args: str) -> CliResult:
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def warehouse(self, *statements: str) -> None:
        con = duckdb.connect(str(self.root / "wh.duckdb"))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()


@dataclass
class SharedState:
    """Copies of one project whose state is the schema `state_schema` of the test PostgreSQL
    server and whose destination `pg` is the schema of `dest`."""

    folder: Path
    url: str
    state_schema: str
    dest: PostgresDb
    syncs: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)
    machines: list[Machine] = field(default_factory=list)

    def sync(self, name: str, table: str, **fields: Any) -> None:
        """`syncs/<name>.yml` of every copy made from now on: `select * from <name>` into the
        destination table, mode upsert, yearly."""
        self.syncs[name] = {
            "warehouse": "wh",
            "source": {"sql": f"select * from {name} order by id"},
            "destination": {"name": "pg", "object": f"{self.dest.schema}.{table}"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
            "schedule": YEARLY,
            **fields,
        }

    def machine(self) -> Machine:
        """A fresh copy: the project's files and a warehouse holding the same source rows."""
        root = self.folder / f"machine{len(self.machines) + 1}"
        (root / "syncs").mkdir(parents=True)
        config = {
            "version": 1,
            "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
            "destinations": {"pg": {"type": "postgres", "url": "${PG_URL}"}},
            "state": {
                "backend": "postgres",
                "url": "${RETL_STATE_URL}",
                "schema": self.state_schema,
            },
        }
        (root / "retl.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        for name, document in self.syncs.items():
            (root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(document, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RETL_", "GIT_"))}
        env.update(
            PYTHONPATH=str(CHECKOUT),
            RETL_STATE_URL=self.url,
            PG_URL=self.url,
            NO_COLOR="1",
            COLUMNS="200",
        )
        machine = Machine(root, env)
        machine.warehouse(*self.source)
        self.machines.append(machine)
        return machine

    def warehouse(self, *statements: str) -> None:
        """Change the source alike in every copy's warehouse (and in copies made later)."""
        self.source.extend(statements)
        for machine in self.machines:
            machine.warehouse(*statements)

    def source_rows(self, table: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.machines[0].root / "wh.duckdb"), read_only=True)
        try:
            return con.execute(f"SELECT id, name FROM {table} ORDER BY id").fetchall()
        finally:
            con.close()

    def run_log(self) -> RunLog:
        return RunLog(PostgresStore(self.url, self.state_schema).database())

    def a_year_passes(self) -> None:
        """Every recorded run moves 400 days back, as if the next yearly tick had come."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                f'SELECT id, started_at, finished_at FROM "{self.state_schema}".runs'
            ).fetchall()
            for run_id, started, finished in rows:
                moved = [parse_timestamp(value) for value in (started, finished)]
                conn.execute(
                    f'UPDATE "{self.state_schema}".runs SET started_at = %s, finished_at = %s '
                    "WHERE id = %s",
                    [None if t is None else timestamp_text(t - timedelta(days=400)) for t in moved]
                    + [run_id],
                )


@pytest.fixture
def shared(tmp_path: Path, postgres_url: str, pg_schema: str) -> Iterator[SharedState]:
    state_schema = f"retl_state_{uuid.uuid4().hex[:12]}"
    dest = PostgresDb(postgres_url, pg_schema)
    yield SharedState(tmp_path, postgres_url, state_schema, dest)
    dest.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{state_schema}" CASCADE')


def runs_of(result: CliResult) -> dict[str, dict[str, Any]]:
    document = json.loads(result.out)
    return {run["sync"]: run for run in document["runs"]}


def slow_down(dest: PostgresDb, table: str, seconds: float) -> None:
    """Every insert statement into `table` takes `seconds` more (a slow destination)."""
    function = f"{dest.schema}.slow_{table}"
    dest.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
    )
    dest.execute(
        f"CREATE TRIGGER slow AFTER INSERT ON {dest.schema}.{table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )


def assert_exactly_once(shared: SharedState, source: str, table: str) -> None:
    """The destination table holds every source row once, as the source has it."""
    delivered = shared.dest.rows(table, columns="id, name")
    twice = [k for k, n in collections.Counter(r[0] for r in delivered).items() if n > 1]
    assert not twice, f"{table}: {len(twice)} records twice, e.g. {twice[:5]}"
    assert delivered == shared.source_rows(source)


# -- two machines, the same moment, round after round ----------------------------------------


def test_two_machines_running_all_at_once_run_each_sync_once_per_round(
    shared: SharedState,
) -> None:
    shared.dest.execute(f"CREATE TABLE {shared.dest.schema}.people (id int PRIMARY KEY, name text)")
    shared.dest.execute(f"CREATE TABLE {shared.dest.schema}.events (id int, name text)")
    # Each insert takes a moment, so that a run outlasts the two processes' start-up skew.
    slow_down(shared.dest, "people", 0.3)
    slow_down(shared.dest, "events", 0.3)
    shared.sync("people", "people")
    shared.sync("events", "events", mode="insert")  # keyless: delivery markers, no upsert
    shared.warehouse(
        "CREATE TABLE people AS SELECT i::INTEGER AS id, 'person ' || i AS name "
        "FROM range(1, 31) t(i)",
        "CREATE TABLE events AS SELECT i::INTEGER AS id, 'event ' || i AS name "
        "FROM range(1, 11) t(i)",
    )
    machines = [shared.machine(), shared.machine()]
    host = socket.gethostname()

    for round_ in range(1, ROUNDS + 1):
        if round_ > 1:
            shared.a_year_passes()
            shared.warehouse(
                f"UPDATE people SET name = 'renamed {round_} ' || id WHERE id % 7 = {round_ % 7}",
                f"INSERT INTO people VALUES ({30 + round_}, 'person {30 + round_}')",
                f"INSERT INTO events SELECT i::INTEGER, 'event ' || i "
                f"FROM range({10 * round_ - 9}, {10 * round_ + 1}) t(i) WHERE i > 10",
            )
        before = {r.id for r in shared.run_log().list()}
        processes = [m.start("run", "--all", "--json") for m in machines]  # the same moment
        results = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            results.append(CliResult(process.returncode, out, err))
        outcomes = [runs_of(r) for r in results]

        for sync in ("people", "events"):
            ran = [o[sync] for o in outcomes if o[sync]["status"] == "success"]
            assert len(ran) == 1, f"round {round_}, {sync}: {[o[sync] for o in outcomes]}"
            (other,) = [o[sync] for o in outcomes if o[sync]["status"] != "success"]
            runner = next(p for p, o in zip(processes, outcomes, strict=True) if o[sync] in ran)
            if other["status"] == "refused":  # it was running elsewhere: names the holder
                named = f"sync '{sync}' is being run by pid {runner.pid} on host {host} since "
                assert other["error"].startswith(named) or other["error"].startswith(
                    f"sync '{sync}' is being run by another run"  # it ended as we asked
                ), other
                assert other["error"].startswith(named) is (f"(retl run {sync})" in other["error"])
            else:  # it started after the other copy's run: not due any more
                assert other["status"] == "skipped", other
                assert other["error"].startswith("not due until "), other
        for result, outcome in zip(results, outcomes, strict=True):
            refused = any(run["status"] == "refused" for run in outcome.values())
            assert result.code == (1 if refused else 0), result.err  # as for any refused run

        new = [r for r in shared.run_log().list() if r.id not in before]
        delivering = collections.Counter(r.sync for r in new if r.status == "success")
        assert delivering == {"people": 1, "events": 1}, f"round {round_}: {new}"
        assert_exactly_once(shared, "people", "people")
        assert_exactly_once(shared, "events", "events")

    # Whether the copies collided on a lock in some round rests on start-up timing; when they
    # did, the refusal named the holder (asserted above). That a held sync is refused naming
    # its holder, deterministically: tests/state/test_store.py and tests/run/test_takeover.py.


# -- a fresh copy sees what the others did ----------------------------------------------------


def test_a_fresh_copy_sees_the_runs_pauses_and_dead_letters_and_runs_only_what_is_due(
    shared: SharedState,
) -> None:
    schema = shared.dest.schema
    shared.dest.execute(f"CREATE TABLE {schema}.people (id int PRIMARY KEY, name varchar(12))")
    shared.dest.execute(f"CREATE TABLE {schema}.events (id int PRIMARY KEY, name text)")
    shared.dest.execute(f"CREATE TABLE {schema}.accounts (id int PRIMARY KEY, name text)")
    shared.sync("people", "people", limits={"max_row_error_ratio": 1})
    shared.sync("events", "events")
    shared.sync("accounts", "accounts")
    shared.warehouse(
        "CREATE TABLE people AS SELECT i::INTEGER AS id, 'person ' || i AS name "
        "FROM range(1, 6) t(i)",
        "UPDATE people SET name = 'a name far too long for it' WHERE id = 3",  # rejected
        "CREATE TABLE events AS SELECT i::INTEGER AS id, 'event ' || i AS name "
        "FROM range(1, 6) t(i)",
        "CREATE TABLE accounts AS SELECT 1 AS id, 'acme' AS name",
    )
    first, second = shared.machine(), shared.machine()
    ran = first.retl("run", "people", "--json")  # by name: events never ran, so it is due
    paused = first.retl("pause", "accounts", "--reason", "incident 42: wrong owner ids")
    assert paused.code == 0, paused.err
    (run,) = runs_of(ran).values()
    assert run["counts"]["create"] == 4 and run["counts"]["rejected"] == 1, ran.output
    fresh = shared.machine()  # the third copy: nothing of the others but the shared store

    status = fresh.retl("status", "--json")
    history = fresh.retl("runs", "--json")
    letters = fresh.retl("dlq", "people", "--json")
    due = fresh.retl("run", "--all", "--json")
    again = second.retl("run", "--all", "--json")

    assert not (fresh.root / ".retl").exists() and not (second.root / ".retl").exists()
    rows = {row["sync"]: row for row in json.loads(status.out)["syncs"]}
    assert rows["people"]["last_run"]["id"] == run["id"]
    assert rows["people"]["dead_letters"] == 1
    assert rows["people"]["next_due"].startswith(f"{int(run['started_at'][:4]) + 1}-01-01T00:00")
    assert rows["events"]["last_run"] is None and rows["events"]["next_due"] is not None
    assert rows["accounts"]["pause"]["reason"] == "incident 42: wrong owner ids"
    assert [r["id"] for r in json.loads(history.out)["runs"]] == [run["id"]]
    (letter,) = json.loads(letters.out)["dead_letters"]
    assert letter["key"] == "3" and "too long" in letter["error"]
    outcomes = runs_of(due)
    assert outcomes["events"]["status"] == "success", due.output
    assert outcomes["events"]["counts"]["create"] == 5
    assert outcomes["people"]["status"] == "skipped"
    assert outcomes["people"]["error"].startswith("not due until ")
    assert outcomes["accounts"]["status"] == "skipped"
    assert "incident 42" in outcomes["accounts"]["error"]
    assert due.code == 0, due.err
    assert {o["status"] for o in runs_of(again).values()} == {"skipped"}  # all done, or paused
    assert shared.dest.count("events") == 5 and shared.dest.count("accounts") == 0
    assert len(shared.dest.rows("people")) == 4


# -- a run that dies, a lease that is taken over -----------------------------------------------

ROWS = 100
BATCH = 5


def slow_sync(shared: SharedState) -> tuple[Machine, Machine]:
    """Two copies of a sync of ROWS rows that inserts BATCH rows per batch, each batch taking
    0.2 s more in the destination: a run lasts a few seconds."""
    shared.dest.execute(f"CREATE TABLE {shared.dest.schema}.people (id int PRIMARY KEY, name text)")
    slow_down(shared.dest, "people", 0.2)
    shared.sync("people", "people", mode="insert", batch_size=BATCH)
    shared.warehouse(
        f"CREATE TABLE people AS SELECT i::INTEGER AS id, 'person ' || i AS name "
        f"FROM range(1, {ROWS + 1}) t(i)"
    )
    return shared.machine(), shared.machine()


def wait_for_rows(shared: SharedState, process: subprocess.Popen[str], rows: int) -> None:
    deadline = time.monotonic() + 60
    while shared.dest.count("people") < rows:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the slow run delivered nothing"
        time.sleep(0.02)


def run_once_free(machine: Machine, sync: str) -> CliResult:
    """`retl run SYNC` from `machine`, again while the lock is still held (the server frees a
    dead holder's lock once it notices its connection closed)."""
    deadline = time.monotonic() + 20
    while True:
        result = machine.retl("run", sync, "--json")
        (run,) = runs_of(result).values()
        if run["status"] != "refused" or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_a_run_killed_on_one_machine_is_finished_by_another_exactly_once(
    shared: SharedState,
) -> None:
    first, second = slow_sync(shared)
    process = first.start("run", "people")
    try:
        wait_for_rows(shared, process, 3 * BATCH)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    landed = shared.dest.count("people")

    result = run_once_free(second, "people")

    (run,) = runs_of(result).values()
    assert run["status"] == "success", result.output
    assert_exactly_once(shared, "people", "people")
    assert BATCH <= landed < ROWS
    # What landed before the kill is recognised by its delivery markers, never sent again.
    assert run["counts"]["create"] == ROWS - landed, run
    plan = second.retl("plan", "people", "--json")
    (counts,) = [s["counts"] for s in json.loads(plan.out)["syncs"]]
    assert (counts["create"], counts["unchanged"]) == (0, ROWS)


def hold_after(dest: PostgresDb, table: str, rows: int) -> None:
    """Once `table` holds `rows` rows, each further insert waits in the destination until
    `open_gate` (its rows not yet committed)."""
    dest.execute(f"CREATE TABLE {dest.schema}.gate (open boolean)")
    dest.execute(f"INSERT INTO {dest.schema}.gate VALUES (false)")
    dest.execute(
        f"CREATE FUNCTION {dest.schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"WHILE NOT (SELECT open FROM {dest.schema}.gate) "
        f"AND (SELECT count(*) FROM {dest.schema}.{table}) > {rows} LOOP "
        "PERFORM pg_sleep(0.02); END LOOP; RETURN NULL; END $$"
    )
    dest.execute(
        f"CREATE TRIGGER hold AFTER INSERT ON {dest.schema}.{table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {dest.schema}.hold()"
    )


def open_gate(dest: PostgresDb) -> None:
    dest.execute(f"UPDATE {dest.schema}.gate SET open = true")


def test_a_run_whose_lease_is_taken_over_stops_saying_so(shared: SharedState) -> None:
    first, second = slow_sync(shared)
    hold_after(shared.dest, "people", 2 * BATCH)
    process = first.start("run", "people")
    try:
        wait_for_rows(shared, process, 2 * BATCH)  # its third batch waits in the destination
        unlocked = second.retl("unlock", "people", "--json")
        open_gate(shared.dest)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert json.loads(unlocked.out)["unlocked"] is True, unlocked.output
    assert json.loads(unlocked.out)["holder"].startswith(f"pid {process.pid} on host ")
    assert process.returncode == 1, out + err
    message = " ".join((out + err).split())
    assert "the lease of sync 'people' was taken over by another run" in message
    assert "this run records nothing more" in message
    assert "see `retl status people` for the run that holds it now" in message
    assert "could not record delivered records in state" not in message
    assert "fix the state store" not in message
    landed = shared.dest.count("people")
    assert landed < ROWS, message  # it stopped before the end

    result = run_once_free(second, "people")

    (run,) = runs_of(result).values()
    assert run["status"] == "success", result.output
    assert run["counts"]["create"] == ROWS - landed, run
    assert_exactly_once(shared, "people", "people")
