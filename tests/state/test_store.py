"""The shared state store (state/store.py, state/postgres.py): the run log, dead letters,
records in doubt, pauses and run locks in a PostgreSQL schema, seen alike from every machine,
with locks the server frees when their holder dies and leases whose fence `retl unlock` breaks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reverse_etl.errors import StateError, StateLockedError
from reverse_etl.state.deadletters import DeadLetterEntry, DeadLetterQueue
from reverse_etl.state.doubts import InDoubtRecords
from reverse_etl.state.pauses import PauseStore
from reverse_etl.state.postgres import SCHEMA_VERSION, PostgresStore
from reverse_etl.state.runlog import RunLog

pytestmark = pytest.mark.postgres


@pytest.fixture
def state_schema(postgres_url: str) -> Iterator[str]:
    """A schema name no other test uses; not created here (the store creates it), dropped
    afterwards when it exists."""
    name = f"retl_state_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def store(postgres_url: str, state_schema: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(postgres_url, state_schema)
    yield opened
    opened.close()


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement.encode())
        return cursor.fetchall() if cursor.description else []


# -- the same tables, the same queries ----------------------------------------------------------


def test_the_run_log_round_trips_through_postgres(store: PostgresStore) -> None:
    log = RunLog(store.database())
    first = log.start("crm", "hash", "abc123", False, trigger="schedule")
    log.progress(first.id, {"create": 5, "requests": 3})
    done = log.finish(first.id, "success", {"create": 7, "requests": 4}, planned={"create": 7})
    refused = log.record("crm", "refused", message="the delete limit")
    log.record("other", "skipped", message="paused")

    assert done.status == "success" and done.counts == {"create": 7, "requests": 4}
    assert done.finished_at is not None and done.planned == {"create": 7}
    assert [r.id for r in log.list("crm")] == [refused.id, first.id]
    assert log.last_success("crm") == done
    assert log.get(first.id[:-2]) == done
    assert log.requests_since(["crm", "other"], first.started_at) == 4
    assert log.last_delivery("crm") == done


def test_a_pooled_connection_the_server_ended_is_not_used_again(
    store: PostgresStore, postgres_url: str
) -> None:
    """After a server restart or a terminated backend, the store's idle connections are dead:
    the next operation opens a new one instead of failing on a stale one."""
    log = RunLog(store.database())
    run = log.start("crm", "hash", "abc123", False, trigger="schedule")
    mine = f"retl {socket.gethostname()} {os.getpid()}"[:63]
    ended = sql(
        postgres_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = '{mine}' AND state = 'idle'",
    )
    assert ended[0][0] >= 1
    deadline = time.monotonic() + 10
    while (
        sql(  # the server has ended them
            postgres_url, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{mine}'"
        )[0][0]
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)

    done = log.finish(run.id, "success", {"create": 1})

    assert done.status == "success" and log.get(run.id) == done


def test_a_run_left_running_is_marked_abandoned(store: PostgresStore) -> None:
    log = RunLog(store.database())
    run = log.start("crm", None, None, False)
    log.progress(run.id, {"create": 2})

    (abandoned,) = log.mark_abandoned("crm")

    assert abandoned.status == "failed" and abandoned.counts == {"create": 2}
    assert log.mark_abandoned("crm") == []


def test_dead_letters_round_trip_and_count_attempts(store: PostgresStore) -> None:
    queue = DeadLetterQueue(store.database())
    entry = DeadLetterEntry("7", "create", {"id": 7, "email": "x@example.com"}, "invalid email")
    queue.add("crm", "run-1", [entry])
    queue.add("crm", "run-2", [entry, DeadLetterEntry("8", "update", {"id": 8}, "too long")])

    letters = {d.key: d for d in queue.list("crm")}
    assert letters["7"].attempts == 2 and letters["7"].run_id == "run-2"
    assert letters["7"].record == {"id": 7, "email": "x@example.com"}
    assert queue.counts_by_sync() == {"crm": 2}
    assert queue.keys("crm") == ["7", "8"]
    assert queue.remove("crm", ["7", "nope"]) == 1
    assert queue.clear("crm") == 1 and queue.count() == 0


def test_records_in_doubt_and_pauses_round_trip(store: PostgresStore) -> None:
    doubts = InDoubtRecords(store.database())
    doubts.add("crm", "run-1", "create", ["a", "b", "c"], "no answer")
    doubts.add("crm", "run-2", "create", ["c"], "short answer")
    doubts.remove("crm", ["a"])
    pauses = PauseStore(store.database())
    pauses.pause("crm", "incident 42", "ana")

    assert doubts.keys("crm") == {"b", "c"}
    assert {d.key: d.reason for d in doubts.list("crm")} == {"b": "no answer", "c": "short answer"}
    assert pauses.all()["crm"].reason == "incident 42"
    assert pauses.resume("crm") is not None and pauses.get("crm") is None
    assert doubts.clear("crm") == 2


# -- schema versions -----------------------------------------------------------------------------


def test_reading_a_store_never_written_creates_nothing(
    store: PostgresStore, postgres_url: str, state_schema: str
) -> None:
    assert RunLog(store.database()).list() == []
    assert PauseStore(store.database()).all() == {}

    exists = f"SELECT count(*) FROM pg_namespace WHERE nspname = '{state_schema}'"
    assert sql(postgres_url, exists) == [(0,)]


def test_the_schema_is_created_in_an_empty_schema_with_its_version(
    postgres_url: str, state_schema: str
) -> None:
    sql(postgres_url, f'CREATE SCHEMA "{state_schema}"')
    with PostgresStore(postgres_url, state_schema) as store:
        PauseStore(store.database()).pause("crm", "why", "ana")

    assert sql(
        postgres_url,
        f"SELECT value FROM \"{state_schema}\".store_meta WHERE key = 'schema_version'",
    ) == [(str(SCHEMA_VERSION),)]
    with PostgresStore(postgres_url, state_schema) as again:  # a second machine: nothing to do
        assert PauseStore(again.database()).get("crm") is not None


def test_a_store_written_by_a_newer_retl_is_refused(
    store: PostgresStore, postgres_url: str, state_schema: str
) -> None:
    PauseStore(store.database()).pause("crm", "why", "ana")
    sql(
        postgres_url,
        f"UPDATE \"{state_schema}\".store_meta SET value = '{SCHEMA_VERSION + 1}' "
        "WHERE key = 'schema_version'",
    )

    with PostgresStore(postgres_url, state_schema) as newer, pytest.raises(StateError) as caught:
        RunLog(newer.database()).list()

    assert f"schema version {SCHEMA_VERSION + 1}" in caught.value.message
    assert "upgrade retl" in (caught.value.hint or "")


def test_a_missing_privilege_shows_the_grant_to_run(postgres_url: str, state_schema: str) -> None:
    role = f"retl_ro_{uuid.uuid4().hex[:8]}"
    sql(postgres_url, f"CREATE ROLE {role} LOGIN")
    try:
        sql(postgres_url, f'CREATE SCHEMA "{state_schema}"')  # owned by postgres: no CREATE
        url = postgres_url.replace("postgres@", f"{role}@", 1)
        with PostgresStore(url, state_schema) as store, pytest.raises(StateError) as caught:
            PauseStore(store.database()).pause("crm", "why", "ana")
        assert f"cannot use the state schema {state_schema}" in caught.value.message
        assert "permission denied" in caught.value.message
        assert f'GRANT USAGE, CREATE ON SCHEMA "{state_schema}" TO "{role}";' in (
            caught.value.hint or ""
        )
    finally:
        sql(postgres_url, f'DROP SCHEMA IF EXISTS "{state_schema}" CASCADE')
        sql(postgres_url, f"DROP ROLE {role}")


def test_an_unreachable_store_is_a_clear_error_without_its_password(state_schema: str) -> None:
    url = "postgresql://retl:hunter2secret@127.0.0.1:1/nowhere"
    with PostgresStore(url, state_schema) as store:
        assert store.where == f"postgres 127.0.0.1:1/nowhere, schema {state_schema}"
        with pytest.raises(StateError) as caught:
            RunLog(store.database()).list()

    text = f"{caught.value.message} {caught.value.hint}"
    assert "cannot reach the state store (postgres 127.0.0.1:1/nowhere" in text
    assert "hunter2secret" not in text and "nothing was sent" in text


# -- locks across machines -------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from reverse_etl.state.postgres import PostgresStore

    store = PostgresStore(sys.argv[1], sys.argv[2])
    with store.lock("crm", command="retl run crm (holder)") as lease:
        print(lease.fence.token, flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def holder(postgres_url: str, state_schema: str) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start another process that holds the lock of `crm` (another machine, as far as the
    store can tell); it prints its lease token once it holds it."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, postgres_url, state_schema],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip().isdigit()
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_lock_held_by_another_process_is_refused_naming_it(
    store: PostgresStore, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    process = holder()

    with pytest.raises(StateLockedError) as caught:
        store.lock("crm").acquire()

    assert f"pid {process.pid}" in caught.value.message
    assert "retl run crm (holder)" in caught.value.message
    info = store.lock_holder("crm")
    assert info is not None and info.pid == process.pid
    with store.lock("other") as lease:  # another sync runs beside it
        assert lease.fence is not None and lease.fence.sync == "other"


def test_a_killed_holder_frees_the_lock_for_the_next_run(
    store: PostgresStore, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    process = holder()
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The server ends the killed process's session as soon as its socket closes.
    deadline = time.monotonic() + 10
    while store.lock_holder("crm") is not None and time.monotonic() < deadline:
        time.sleep(0.02)

    with store.lock("crm") as lease:
        assert lease.fence is not None and lease.fence.token == 2  # the killed run had 1
        info = store.lock_holder("crm")
        assert info is not None and info.pid == os.getpid()
    assert store.lock_holder("crm") is None


def test_force_unlock_breaks_the_fence_of_the_old_holder(
    store: PostgresStore, postgres_url: str
) -> None:
    lease = store.lock("crm")
    lease.acquire()
    fence = lease.fence
    assert fence is not None
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert conn.execute(fence.check_statement().encode()).rowcount == 1

            assert store.force_unlock("crm") is True

            assert conn.execute(fence.check_statement().encode()).rowcount == 0
        assert store.force_unlock("crm") is False  # nothing left to clear
    finally:
        lease.release()
    with store.lock("crm") as again:
        assert again.fence is not None and again.fence.token > fence.token


# -- two copies of a project, one store ------------------------------------------------------------

RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  mem:
    type: memory
    store: {store}
    objects: {{people: [id, name]}}
    reject_when: {{name: bad}}
state:
  backend: postgres
  url: ${{RETL_STATE_URL}}
  schema: {schema}
"""
SYNC = """warehouse: memory
source:
  sql: select 1 as id, 'ann' as name union all select 2, 'bad'
destination:
  name: mem
  object: people
mode: upsert
primary_key: id
mapping:
  id: id
  name: name
schedule: "0 0 * * *"
limits:
  max_row_error_ratio: 1
"""


def test_a_second_copy_of_the_project_sees_the_runs_dead_letters_and_schedule_of_the_first(
    tmp_path: Path,
    postgres_url: str,
    state_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    memory_destination: dict[str, Any],
    retl_cli: Callable[..., Any],
) -> None:
    monkeypatch.setenv("RETL_STATE_URL", postgres_url)
    copies = [tmp_path / "first", tmp_path / "second"]
    for root in copies:
        (root / "syncs").mkdir(parents=True)
        retl_yml = RETL_YML.format(store=f"store_{uuid.uuid4().hex[:6]}", schema=state_schema)
        (root / "retl.yml").write_text(retl_yml)
        (root / "syncs" / "people.yml").write_text(SYNC)
    first, second = copies

    ran = retl_cli("run", "--all", "--json", "--project-dir", str(first))
    assert ran.json()["runs"][0]["counts"]["create"] == 1, ran.err

    status = retl_cli("status", "--json", "--project-dir", str(second))
    runs = retl_cli("runs", "--json", "--project-dir", str(second))
    dlq = retl_cli("dlq", "people", "--json", "--project-dir", str(second))
    again = retl_cli("run", "--all", "--json", "--project-dir", str(second))
    text = retl_cli("status", "--project-dir", str(second))

    assert not (second / ".retl").exists()
    document = status.json()
    assert document["state"]["where"] == f"postgres 127.0.0.1:5432/test, schema {state_schema}"
    assert document["state"]["shared"] is True
    (row,) = document["syncs"]
    assert row["last_run"]["id"] == ran.json()["runs"][0]["id"]
    assert row["dead_letters"] == 1 and row["next_due"] is not None
    assert [r["id"] for r in runs.json()["runs"]] == [row["last_run"]["id"]]
    assert "rejected: name = 'bad'" in dlq.out
    (skipped,) = again.json()["runs"]
    assert skipped["status"] == "skipped" and "not due" in skipped["error"]
    assert f"state: postgres 127.0.0.1:5432/test, schema {state_schema}" in text.out
