"""`state.backend: postgres`: snapshots live in a dedicated PostgreSQL database that every copy
of a project shares, the diff runs locally over a copy of them, and every acknowledgement of a
run is fenced by its lease (SPEC §6.3). A DuckDB warehouse, a file destination, real PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
import yaml

from reverse_etl.config import load_project
from reverse_etl.errors import StateLockedError
from reverse_etl.plan.source import engine_connection
from reverse_etl.run import Engine
from reverse_etl.state.backends import SnapshotBackend, WarehouseBackend, open_backend
from reverse_etl.state.fence import Fence
from reverse_etl.state.postgres_snapshots import PostgresBackend

pytestmark = pytest.mark.postgres

SYNC = {
    "warehouse": "wh",
    "source": {"sql": "select id, name from src"},
    "destination": {"name": "out", "object": "people"},
    "mode": "upsert",
    "primary_key": "id",
    "mapping": {"id": "id", "name": "name"},
}


@dataclass
class SharedState:
    """Copies of one project (a DuckDB warehouse they all read, state in a schema of the test
    PostgreSQL), each with its own `.retl/` and its own file destination `out/`."""

    base: Path
    warehouse: Path
    url: str
    schema: str
    cli: Callable[..., Any]

    def project(self, name: str, **sync: Any) -> Path:
        root = self.base / name
        (root / "syncs").mkdir(parents=True, exist_ok=True)
        (root / "retl.yml").write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "warehouses": {"wh": {"url": f"duckdb:///{self.warehouse}"}},
                    "destinations": {"out": {"type": "file", "path": "out", "format": "jsonl"}},
                    "state": {
                        "backend": "postgres",
                        "url": "${RETL_STATE_URL}",
                        "schema": self.schema,
                    },
                }
            )
        )
        (root / "syncs" / "people.yml").write_text(yaml.safe_dump({**SYNC, **sync}))
        return root

    def copy(self, root: Path, name: str) -> Path:
        """A second checkout of the project: its files only, no `.retl/`, no `out/`."""
        other = self.base / name
        other.mkdir()
        shutil.copy(root / "retl.yml", other / "retl.yml")
        shutil.copytree(root / "syncs", other / "syncs")
        return other

    def source(self, *statements: str) -> None:
        con = duckdb.connect(str(self.warehouse))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()

    def retl(self, root: Path, *args: str) -> Any:
        return self.cli(*args, "--project-dir", str(root))

    def plan(self, root: Path, **sync: Any) -> dict[str, Any]:
        planned = self.retl(root, "plan", "people", "--json")
        assert planned.code == 0, planned.out + planned.err
        (document,) = planned.json()["syncs"]
        return dict(document)

    def run(self, root: Path) -> dict[str, Any]:
        ran = self.retl(root, "run", "people", "--json")
        assert ran.code == 0, ran.out + ran.err
        (outcome,) = ran.json()["runs"]
        assert outcome["status"] == "success", outcome
        return dict(outcome)

    def state_rows(self, sync: str = "people") -> dict[str, str]:
        """key -> hash of the sync's rows in the state database (every target)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            found = conn.execute(f"SELECT to_regclass('{self.schema}.retl_snapshot')").fetchone()
            if found == (None,):
                return {}
            rows = conn.execute(
                f"SELECT key, hash FROM {self.schema}.retl_snapshot WHERE sync = %s", [sync]
            ).fetchall()
        return {str(k): str(h) for k, h in rows}


def delivered(root: Path) -> dict[int, str]:
    """id -> name of the records the project's file destination holds (last write wins)."""
    path = root / "out" / "people.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["id"]): str(r["name"]) for r in records}


@pytest.fixture
def shared(
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    retl_cli: Callable[..., Any],
) -> Iterator[SharedState]:
    monkeypatch.setenv("RETL_STATE_URL", postgres_url)
    state = SharedState(tmp_path, tmp_path / "wh.duckdb", postgres_url, pg_schema, retl_cli)
    state.source("CREATE TABLE src AS SELECT range AS id, 'n' || range AS name FROM range(1, 41)")
    yield state


# --------------------------------------------------------------------------- shared by copies


def test_a_second_copy_of_the_project_plans_no_change_and_sends_only_what_changed(
    shared: SharedState,
) -> None:
    first = shared.project("first")
    ran = shared.run(first)
    assert ran["counts"]["create"] == 40
    assert delivered(first) == {i: f"n{i}" for i in range(1, 41)}
    assert len(shared.state_rows()) == 40
    assert not (first / ".retl" / "state").exists()  # nothing of the snapshot stays local

    second = shared.copy(first, "second")
    document = shared.plan(second)
    assert (document["counts"]["create"], document["counts"]["unchanged"]) == (0, 40)

    shared.source("UPDATE src SET name = 'changed' WHERE id = 7")
    document = shared.plan(second)
    assert (document["counts"]["update"], document["counts"]["unchanged"]) == (1, 39)
    assert shared.run(second)["counts"]["update"] == 1
    assert delivered(second) == {7: "changed"}

    # The first copy sees what the second one delivered.
    document = shared.plan(first)
    assert (document["counts"]["update"], document["counts"]["unchanged"]) == (0, 40)


def test_the_run_log_counts_the_records_state_holds_after_the_run(shared: SharedState) -> None:
    root = shared.project("first")
    shared.source("DELETE FROM src WHERE id > 30")
    ran = shared.run(root)

    shown = shared.retl(root, "runs", "show", ran["id"], "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["state_records"] == 30


def test_planning_creates_nothing_in_the_state_database(shared: SharedState) -> None:
    root = shared.project("first")

    assert shared.plan(root)["counts"]["create"] == 40
    with psycopg.connect(shared.url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            [shared.schema],
        ).fetchone()
    assert tables == (0,)


def test_a_new_target_keeps_the_old_state_aside_and_switching_back_uses_it_again(
    shared: SharedState,
) -> None:
    root = shared.project("first")
    shared.run(root)
    shared.project("first", destination={"name": "out", "object": "contacts"})

    document = shared.plan(root)
    assert document["counts"]["create"] == 40
    assert document["target_change"]["kept_aside"].startswith(
        f"{shared.schema}.retl_snapshot target "
    )
    shared.run(root)
    shown = shared.retl(root, "state", "show", "people", "--json").json()
    assert shown["records"] == 40
    assert [k.split(" target ")[0] for k in shown["kept_aside"]] == [
        f"{shared.schema}.retl_snapshot"
    ]

    shared.project("first")  # back to `people`: its state was kept
    document = shared.plan(root)
    assert (document["counts"]["create"], document["counts"]["unchanged"]) == (0, 40)


def test_state_show_names_the_database_without_its_password_and_reset_forgets(
    shared: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared.project("first")
    shared.run(root)
    # The same server through a URL with a password (trust authentication ignores it).
    monkeypatch.setenv("RETL_STATE_URL", shared.url.replace("postgres@", "postgres:s3cr3t@"))

    shown = shared.retl(root, "state", "show", "people", "--json")
    assert shown.code == 0, shown.err
    document = shown.json()
    assert document["records"] == 40
    assert document["path"].endswith(f"{shared.schema}.retl_snapshot")
    assert "state database postgresql://postgres:***@" in document["path"]
    assert "s3cr3t" not in shown.out + shown.err
    assert [s["key"] for s in document["sample"]][:3] == ["1", "10", "11"]

    reset = shared.retl(root, "state", "reset", "people", "--yes", "--json")
    assert reset.code == 0 and reset.json() == {"sync": "people", "reset": True}
    assert shared.state_rows() == {}
    assert shared.plan(shared.copy(root, "second"))["counts"]["create"] == 40


def test_an_unreachable_state_database_is_a_clear_error_and_nothing_is_sent(
    shared: SharedState, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared.project("first")
    monkeypatch.setenv("RETL_STATE_URL", "postgresql://retl:s3cr3t@127.0.0.1:9/state")

    for command in ("plan", "run"):
        result = shared.retl(root, command, "people")
        output = result.out + result.err
        assert result.code != 0, output
        text = " ".join(output.split())
        # The run log's store is asked first (a run), or the snapshot's database (a plan):
        # either names the server, never the password.
        assert (
            "cannot connect to the state database at postgresql://retl:***@127.0.0.1:9/state"
            in text
            or "cannot reach the state store (postgres 127.0.0.1:9/state, schema" in text
        ), text
        assert "state.url" in output
        assert "s3cr3t" not in output
        assert "Traceback" not in output
    assert delivered(root) == {}


# --------------------------------------------------------------------------- fencing


def _lease(url: str, schema: str, sync: str, token: int) -> None:
    """The lease row the shared store keeps (its DDL), set to `token`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.retl_locks (sync TEXT PRIMARY KEY, token BIGINT "
            'NOT NULL, host TEXT, pid INTEGER, "user" TEXT, started_at TIMESTAMPTZ, command TEXT, '
            "heartbeat_at TIMESTAMPTZ)"
        )
        conn.execute(
            f"INSERT INTO {schema}.retl_locks (sync, token, started_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (sync) DO UPDATE SET token = EXCLUDED.token",
            [sync, token],
        )


def _records(first: int, last: int) -> pa.Table:
    keys = [str(i) for i in range(first, last + 1)]
    return pa.table({"key": keys, "hash": [f"h{k}" for k in keys], "dest_id": keys})


def _fenced_project(shared: SharedState, backend: str) -> Path:
    """The project with state in the state database, or in its PostgreSQL warehouse."""
    root = shared.project("first")
    if backend == "warehouse":
        document = yaml.safe_load((root / "retl.yml").read_text())
        document["warehouses"] = {"wh": {"url": shared.url}}
        document["state"] = {"backend": "warehouse", "warehouse": "wh", "schema": shared.schema}
        (root / "retl.yml").write_text(yaml.safe_dump(document))
    return root


@pytest.mark.parametrize("backend", ["postgres", "warehouse"])
def test_acknowledgements_commit_while_the_lease_holds_and_none_once_it_is_taken_over(
    shared: SharedState, backend: str
) -> None:
    root = _fenced_project(shared, backend)
    project = load_project(root)
    engine = Engine(project)
    target = engine.target(engine.sync("people"))
    _lease(shared.url, shared.schema, "people", token=7)
    fence = Fence(shared.schema, "people", 7)
    con = engine_connection()
    state: SnapshotBackend = open_backend(project, "people", root / ".retl" / "state", fence)
    with state:
        assert isinstance(state, PostgresBackend if backend == "postgres" else WarehouseBackend)
        state.open(con, target, writable=True, mode="upsert")
        state.acknowledge(con, _records(1, 3), None, watermark="w1")
        assert sorted(shared.state_rows()) == ["1", "2", "3"]

        _lease(shared.url, shared.schema, "people", token=8)  # another run took the lease over
        with pytest.raises(StateLockedError, match="taken over by another run"):
            state.acknowledge(con, _records(4, 6), _records(1, 1), watermark="w2")

        assert sorted(shared.state_rows()) == ["1", "2", "3"]
        assert state.meta(con).watermark == "w1"
    con.close()


def test_the_fence_is_not_checked_on_a_duckdb_warehouse(shared: SharedState) -> None:
    """Leases live in a PostgreSQL store; a DuckDB warehouse has no lease table to check."""
    root = shared.project("first")
    document = yaml.safe_load((root / "retl.yml").read_text())
    document["warehouses"] = {"wh": {"url": f"duckdb:///{shared.warehouse}?access_mode=read_write"}}
    document["state"] = {"backend": "warehouse", "warehouse": "wh"}
    (root / "retl.yml").write_text(yaml.safe_dump(document))
    project = load_project(root)
    engine = Engine(project)
    target = engine.target(engine.sync("people"))
    con = engine_connection()
    fence = Fence("retl_state", "people", 1)
    with open_backend(project, "people", root / ".retl" / "state", fence) as state:
        state.open(con, target, writable=True, mode="upsert")
        state.acknowledge(con, _records(1, 2), None)
        assert state.meta(con).records == 2
    con.close()


# --------------------------------------------------------------------------- the local copy


def test_the_local_copy_holds_every_key_hash_and_id_as_stored(shared: SharedState) -> None:
    """Keys and ids with separators, quotes, line breaks, empty text and no id at all come out
    of PostgreSQL into the local diff exactly as they went in."""
    root = shared.project("first")
    project = load_project(root)
    engine = Engine(project)
    target = engine.target(engine.sync("people"))
    rows = pa.table(
        {
            "key": ["", "a,b", 'say "hi"', "two\nlines", "tab\there", "東京", "\\N"],
            "hash": ["h0", "h1", "h2", "h3", "h4", "h5", "h6"],
            "dest_id": [None, "", "id,2", None, '"3"', "4", "\\."],
        }
    )
    con = engine_connection()
    with open_backend(project, "people", root / ".retl" / "state") as state:
        state.open(con, target, writable=True, mode="upsert")
        state.acknowledge(con, rows, None)
    con.close()

    con = engine_connection()
    with open_backend(project, "people", root / ".retl" / "state") as state:
        state.open(con, target, writable=False, mode="upsert")
        copied = con.execute(
            "SELECT key, hash, dest_id FROM retl_state.snapshot ORDER BY hash"
        ).fetchall()
        meta = con.execute("SELECT value FROM retl_state.meta WHERE name = 'serial'").fetchall()
        assert meta == [(str(state.meta(con).serial),)]
    con.close()
    assert copied == [tuple(r.values()) for r in rows.to_pylist()]
