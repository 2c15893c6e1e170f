"""`state.backend: warehouse`: the snapshot lives in a schema of the warehouse, the diff runs
there, and only new, changed and removed rows leave it (SPEC §6.3). Real PostgreSQL and DuckDB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import psycopg
import pytest
import yaml

from reverse_etl.config import load_project
from reverse_etl.errors import StateError
from reverse_etl.mapping import compile_mapping
from reverse_etl.mapping.dialects import translate, warehouse_mapping
from reverse_etl.plan.diff import load_source
from reverse_etl.plan.source import engine_connection
from reverse_etl.run import Engine, RunOptions
from reverse_etl.types import TargetId
from reverse_etl.warehouse import open_warehouse
from reverse_etl.warehouse.sessions import open_session

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the record hash

HASHED_TYPES = """
    id integer, big bigint, name text, price numeric(10,2), score double precision,
    ratio real, active boolean, born date, seen timestamp, seen_at timestamptz
"""
HASHED_ROWS = [
    "(1, 9007199254740993, 'Ana', 12.50, 1.0, 1.5, true, '2024-01-02', "
    "'2024-01-02 03:04:05', '2024-01-02 03:04:05.5+02')",
    "(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(3, -1, 'Zoë “quoted” 東京 🎉', -0.01, 0.1, 123456789, false, '1999-12-31', "
    "'2024-01-02 03:04:05.123456', '1970-01-01 00:00:00+00')",
    "(4, 0, '', 0, 1e15, 0.25, true, '2024-02-29', '2024-01-01 00:00:00', "
    "'2024-06-01 12:00:00-07')",
    "(5, 5, 'a:b N: S1:', 99999999.99, 1e16, -3.5, false, '2000-01-01', "
    "'2000-01-01 00:00:00', '2000-01-01 00:00:00+00')",
    "(6, 6, 'x', 1, 'NaN', 'Infinity', true, '2000-01-01', '2000-01-01', '2000-01-01 00:00+00')",
    "(7, 7, 'y', 2, '-Infinity', 1e-7, true, '2000-01-01', '2000-01-01', '2000-01-01 00:00+00')",
    "(8, 8, 'z', 3, 1000000000000000.5, 0, true, '2000-01-01', '2000-01-01', "
    "'2000-01-01 00:00+00')",
    "(9, 9, 'w', 4, 1.2345678901234568e+16, 1e10, true, '2000-01-01', '2000-01-01', "
    "'2000-01-01 00:00+00')",
    "(10, 10, 'v', 5, -0.0, 2.5e-30, true, '2000-01-01', '2000-01-01', '2000-01-01 00:00+00')",
    # `trim` removes the same characters everywhere (DuckDB's own trim drops U+00A0 too, and
    # PostgreSQL's only spaces).
    "(11, 11, chr(160) || ' Ann ' || chr(9) || chr(10), 6, 0, 0, true, '2000-01-01', "
    "'2000-01-01', '2000-01-01 00:00+00')",
]
HASHED_MAPPING = {
    "id": "id",
    "big": "big",
    "name": "name",
    "price": "price",
    "score": "score",
    "ratio": "ratio",
    "active": "active",
    "born": "born",
    "seen": "seen",
    "seen_at": "seen_at",
    "label": "{{ name | default('nobody') | upper }} scored {{ score }}",
    "trimmed": "[{{ name | trim }}]",
    "source_system": {"value": "warehouse"},
}


def hashing_project(root: Path, url: str, table: str) -> Any:
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "warehouses": {"wh": {"url": url}},
                "destinations": {"out": {"type": "file", "path": "out", "format": "jsonl"}},
            }
        )
    )
    sync = {
        "warehouse": "wh",
        "source": {"sql": f"select * from {table}"},
        "destination": {"name": "out", "object": "people"},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": HASHED_MAPPING,
    }
    (root / "syncs" / "people.yml").write_text(yaml.safe_dump(sync))
    return load_project(root).syncs["people"]


def local_hashes(sync: Any, root: Path) -> dict[str, str]:
    """Key -> hash as the local backend computes them: rows read into DuckDB, hashed there."""
    con = engine_connection()
    mapping = compile_mapping(sync.config, sync.key_field())
    url = load_project(root).config.warehouses["wh"].url
    with open_warehouse("wh", url, root) as warehouse:
        load_source(con, warehouse.stream(sync.sql), mapping)
    rows = con.execute("SELECT __retl_key, __retl_hash FROM retl_source").fetchall()
    return {str(k): str(h) for k, h in rows}


def warehouse_hashes(sync: Any, root: Path) -> dict[str, str]:
    """Key -> hash as the warehouse computes them, in its own dialect."""
    url = load_project(root).config.warehouses["wh"].url
    with open_session("wh", url, root) as session:
        floats = session.float_columns(sync.sql)
        mapping = warehouse_mapping(sync.config, sync.key_field(), floats, session.dialect)
        sql = translate(
            f"SELECT {mapping.key_expression}, {mapping.hash_expression('p')} FROM (SELECT "
            f"{mapping.projection} FROM retl_src AS retl_source) AS p",
            session.dialect,
        ).replace("retl_src", f"({sync.sql})")
        # The key expression reads `id` of the projection: the key column is mapped as `id`.
        return {str(k): str(h) for k, h in session.execute(sql)}


@pytest.mark.postgres
def test_postgres_computes_the_local_hash_of_every_row(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {pg_schema}.people ({HASHED_TYPES})")
        conn.execute(f"INSERT INTO {pg_schema}.people VALUES {', '.join(HASHED_ROWS)}")
    sync = hashing_project(tmp_path, postgres_url, f"{pg_schema}.people")

    local = local_hashes(sync, tmp_path)
    remote = warehouse_hashes(sync, tmp_path)

    assert len(local) == len(HASHED_ROWS)
    assert remote == local


def test_duckdb_computes_the_local_hash_of_every_row(tmp_path: Path) -> None:
    database = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(database))
    con.execute(f"CREATE TABLE people ({HASHED_TYPES.replace('double precision', 'double')})")
    con.execute(f"INSERT INTO people VALUES {', '.join(HASHED_ROWS)}")
    con.close()
    sync = hashing_project(tmp_path, "duckdb:///wh.duckdb", "people")

    local = local_hashes(sync, tmp_path)
    remote = warehouse_hashes(sync, tmp_path)

    assert len(local) == len(HASHED_ROWS)
    assert remote == local


# --------------------------------------------------------------------------- runs on PostgreSQL


@dataclass
class WarehouseProject:
    """A project whose source, destination and state are schemas of the test PostgreSQL."""

    root: Path
    conn: psycopg.Connection[Any]
    schema: str
    state_schema: str
    url: str

    def sql(self, *statements: str) -> None:
        for statement in statements:
            self.conn.execute(statement)

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(query).fetchall())

    def write_sync(self, name: str = "people", **fields: Any) -> None:
        document: dict[str, Any] = {
            "warehouse": "wh",
            "source": {"sql": f"select * from {self.schema}.src"},
            "destination": {"name": "pg", "object": f"{self.schema}.dst"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
        }
        document.update(fields)
        (self.root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(document))

    def engine(self) -> Engine:
        return Engine(load_project(self.root))

    def plan(self, name: str = "people", **options: Any) -> Any:
        engine = self.engine()
        return engine.plan(engine.sync(name), **options)

    def run(self, name: str = "people", **options: Any) -> Any:
        engine = self.engine()
        return engine.run(engine.sync(name), RunOptions(**options))

    def destination(self) -> dict[int, str | None]:
        return {int(i): n for i, n in self.rows(f"SELECT id, name FROM {self.schema}.dst")}

    def source(self) -> dict[int, str | None]:
        return {int(i): n for i, n in self.rows(f"SELECT id, name FROM {self.schema}.src")}

    def state_keys(self, sync: str = "people") -> set[str]:
        if self.rows(f"SELECT to_regclass('{self.state_schema}.retl_snapshot')") == [(None,)]:
            return set()
        rows = self.rows(f"SELECT key FROM {self.state_schema}.retl_snapshot WHERE sync = '{sync}'")
        return {str(r[0]) for r in rows}


@pytest.fixture
def wp(
    postgres_url: str, pg_schema: str, tmp_path: Path, clean_env: None
) -> Iterator[WarehouseProject]:
    state_schema = f"{pg_schema}_state"
    root = tmp_path / "project"
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "warehouses": {"wh": {"url": postgres_url}},
                "destinations": {"pg": {"type": "postgres", "url": postgres_url}},
                "state": {"backend": "warehouse", "warehouse": "wh", "schema": state_schema},
            }
        )
    )
    conn = psycopg.connect(postgres_url, autocommit=True)
    conn.execute(f"CREATE TABLE {pg_schema}.src (id integer, name text)")
    conn.execute(f"CREATE TABLE {pg_schema}.dst (id integer PRIMARY KEY, name text)")
    project = WarehouseProject(root, conn, pg_schema, state_schema, postgres_url)
    yield project
    conn.execute(f"DROP SCHEMA IF EXISTS {state_schema} CASCADE")
    conn.close()


def fill(wp: WarehouseProject, n: int) -> None:
    wp.sql(f"INSERT INTO {wp.schema}.src SELECT g, 'name ' || g FROM generate_series(1, {n}) AS g")


@pytest.mark.postgres
def test_state_lives_in_the_warehouse_schema_and_only_changed_rows_are_fetched(
    wp: WarehouseProject,
) -> None:
    wp.write_sync(on_removed="delete", allow_destructive=True)
    fill(wp, 200)

    first = wp.run()
    assert first.status == "success", first.error
    assert first.plan.fetched_rows == 200
    assert wp.state_keys() == {str(i) for i in range(1, 201)}
    assert not (wp.root / ".retl" / "state" / "people.duckdb").exists()

    wp.sql(
        f"UPDATE {wp.schema}.src SET name = 'changed' WHERE id IN (3, 4)",
        f"DELETE FROM {wp.schema}.src WHERE id = 5",
        f"INSERT INTO {wp.schema}.src VALUES (500, 'new')",
    )
    plan = wp.plan()

    assert (plan.counts.create, plan.counts.update, plan.counts.delete) == (1, 2, 1)
    assert plan.counts.unchanged == 197
    assert plan.source_rows == 200
    assert plan.fetched_rows == 4
    assert plan.samples["update"] == [{"id": 3, "name": "changed"}, {"id": 4, "name": "changed"}]
    assert plan.samples["delete"] == [{"id": 5}]

    second = wp.run()
    assert second.status == "success", second.error
    assert wp.destination() == wp.source()
    assert wp.state_keys() == {str(i) for i in wp.source()}
    assert wp.plan().counts.to_send == 0


@pytest.mark.postgres
def test_null_and_duplicate_keys_are_row_errors_and_never_sent(wp: WarehouseProject) -> None:
    wp.write_sync()
    fill(wp, 5)
    wp.sql(f"INSERT INTO {wp.schema}.src VALUES (2, 'twin'), (NULL, 'nobody'), (NULL, 'none')")

    plan = wp.plan()

    assert plan.counts.error == 4
    assert plan.counts.create == 4
    assert sorted((e.key, e.rows) for e in plan.row_errors if e.key) == [("2", 2)]
    assert [e.rows for e in plan.row_errors if e.key is None] == [2]
    outcome = wp.run(dry_run=False)
    assert set(wp.destination()) == {1, 3, 4, 5}
    assert outcome.counts["create"] == 4


@pytest.mark.postgres
def test_a_new_target_makes_every_row_new_and_derives_no_delete(wp: WarehouseProject) -> None:
    wp.write_sync(on_removed="delete", allow_destructive=True)
    fill(wp, 10)
    assert wp.run().status == "success"
    wp.sql(f"CREATE TABLE {wp.schema}.dst2 (id integer PRIMARY KEY, name text)")
    wp.sql(f"DELETE FROM {wp.schema}.src WHERE id > 8")
    wp.write_sync(
        on_removed="delete",
        allow_destructive=True,
        destination={"name": "pg", "object": f"{wp.schema}.dst2"},
    )

    plan = wp.plan()

    assert plan.target_change is not None and not plan.target_change.restored
    assert (plan.counts.create, plan.counts.delete, plan.counts.unchanged) == (8, 0, 0)
    assert wp.run().status == "success"
    # Pointing back reuses the state kept for the first target: only the removals are left.
    wp.write_sync(on_removed="delete", allow_destructive=True)
    back = wp.plan()
    assert back.target_change is not None and back.target_change.restored
    assert (back.counts.create, back.counts.delete, back.counts.unchanged) == (0, 2, 8)


DELETE_MODE = {
    "mode": "delete",
    "allow_destructive": True,
    "mapping": {"id": "id"},
    "limits": {"max_deletes": 1000, "max_delete_ratio": 1.0},
}


@pytest.mark.postgres
def test_erasure_requests_after_a_switch_to_delete_mode_are_honoured(wp: WarehouseProject) -> None:
    """The upsert state is kept aside at the switch: keys it delivered make no erasure request
    of delete mode unchanged (issue 15, case 3)."""
    wp.write_sync()
    fill(wp, 400)
    assert wp.run().counts["create"] == 400
    wp.sql(f"CREATE TABLE {wp.schema}.erase (id integer)")
    wp.write_sync(source={"sql": f"select * from {wp.schema}.erase"}, **DELETE_MODE)
    switched = wp.run()  # no erasure request yet
    assert switched.status == "success" and switched.counts["delete"] == 0
    assert switched.plan.mode_switch is not None
    assert switched.plan.mode_switch.previous == "upsert"
    wp.sql(f"INSERT INTO {wp.schema}.erase SELECT id FROM {wp.schema}.src")

    plan = wp.plan()
    outcome = wp.run()

    assert (plan.counts.delete, plan.counts.unchanged, plan.counts.ignored) == (400, 0, 0)
    assert outcome.counts["delete"] == 400
    assert wp.destination() == {}
    kept = wp.rows(
        f"SELECT target, count(*) FROM {wp.state_schema}.retl_snapshot WHERE sync = 'people' "
        "AND target LIKE '%-deliver' GROUP BY target"
    )
    assert [n for _, n in kept] == [400]
    assert switched.plan.mode_switch.kept_aside.endswith(str(kept[0][0]))


@pytest.mark.postgres
def test_state_kept_by_an_older_version_still_describes_its_target(wp: WarehouseProject) -> None:
    """Until this release the location kept `user@` and the port, and the warehouse keyed the
    rows by its digest: after the upgrade the same target reads them, nothing is sent again."""
    wp.write_sync()
    fill(wp, 10)
    assert wp.run().counts["create"] == 10
    parts = urlsplit(wp.url)
    older = {
        "destination": "pg",
        "type": "postgres",
        "object": f"{wp.schema}.dst",
        "location": f"postgresql://{parts.username}@{parts.hostname}:{parts.port or 5432}"
        f"{parts.path}",
    }
    text = json.dumps(older, sort_keys=True)
    digest = TargetId.digest_of_text(text)
    (now,) = wp.rows(f"SELECT DISTINCT target FROM {wp.state_schema}.retl_snapshot")
    assert digest is not None and digest != now[0]
    for table in ("retl_snapshot", "retl_meta"):
        wp.sql(
            f"UPDATE {wp.state_schema}.{table} SET target = '{digest}' WHERE target = '{now[0]}'"
        )
    wp.sql(
        f"UPDATE {wp.state_schema}.retl_meta SET value = '{text}' WHERE target = '' "
        "AND name = 'target'"
    )
    wp.sql(f"DELETE FROM {wp.schema}.src WHERE id > 8")

    plan = wp.plan()
    outcome = wp.run()

    assert plan.target_change is None and plan.mode_switch is None
    assert (plan.counts.create, plan.counts.unchanged) == (0, 8)
    assert outcome.counts["create"] == 0
    # The rows now carry the digest of the target as it is written from now on.
    assert wp.rows(f"SELECT DISTINCT target FROM {wp.state_schema}.retl_snapshot") == [now]


@pytest.mark.postgres
def test_a_run_that_cannot_reach_a_new_target_changes_no_warehouse_state(
    wp: WarehouseProject,
) -> None:
    wp.write_sync()
    fill(wp, 5)
    assert wp.run().status == "success"
    before = wp.rows(f"SELECT * FROM {wp.state_schema}.retl_meta ORDER BY target, name")
    config = yaml.safe_load((wp.root / "retl.yml").read_text())
    good = config["destinations"]["pg"]["url"]
    config["destinations"]["pg"]["url"] = "postgresql://postgres@127.0.0.1:1/test"
    (wp.root / "retl.yml").write_text(yaml.safe_dump(config))

    failed = wp.run()

    assert failed.status == "failed"
    after = wp.rows(f"SELECT * FROM {wp.state_schema}.retl_meta ORDER BY target, name")
    assert after == before
    config["destinations"]["pg"]["url"] = good
    (wp.root / "retl.yml").write_text(yaml.safe_dump(config))
    back = wp.plan()
    assert back.target_change is None and back.counts.unchanged == 5


@pytest.mark.postgres
def test_incremental_reads_only_rows_from_the_watermark(wp: WarehouseProject) -> None:
    wp.sql(f"ALTER TABLE {wp.schema}.src ADD COLUMN updated_at timestamptz")
    wp.write_sync(incremental={"column": "updated_at"})
    wp.sql(
        f"INSERT INTO {wp.schema}.src SELECT g, 'n' || g, timestamptz '2024-01-01 00:00+00' + "
        "g * interval '1 hour' FROM generate_series(1, 6) AS g"
    )
    assert wp.run().status == "success"
    wp.sql(
        f"UPDATE {wp.schema}.src SET name = 'late', updated_at = timestamptz '2025-01-01 00:00+00'"
        " WHERE id = 2"
    )

    plan = wp.plan()

    assert plan.incremental_from == "2024-01-01 06:00:00+00"
    assert plan.source_rows == 2  # the row at the watermark and the changed one
    assert (plan.counts.update, plan.counts.unchanged, plan.fetched_rows) == (1, 1, 1)
    assert wp.run().status == "success"
    assert wp.destination()[2] == "late"


@pytest.mark.postgres
def test_state_show_and_reset_work_on_the_warehouse(
    wp: WarehouseProject, retl_cli: Callable[..., Any]
) -> None:
    wp.write_sync()
    fill(wp, 3)
    assert wp.run().status == "success"

    shown = retl_cli("state", "show", "people", "--json", "--project-dir", str(wp.root))
    assert shown.code == 0, shown.err
    document = shown.json()
    assert document["records"] == 3
    assert document["path"] == f"warehouse 'wh', {wp.state_schema}.retl_snapshot"
    assert [s["key"] for s in document["sample"]] == ["1", "2", "3"]

    reset = retl_cli("state", "reset", "people", "--yes", "--json", "--project-dir", str(wp.root))
    assert reset.code == 0 and reset.json() == {"sync": "people", "reset": True}
    assert wp.state_keys() == set()
    assert wp.plan().counts.create == 3


@pytest.mark.postgres
def test_plan_and_run_from_the_cli_report_rows_fetched(
    wp: WarehouseProject, retl_cli: Callable[..., Any]
) -> None:
    wp.write_sync()
    fill(wp, 50)
    assert retl_cli("run", "people", "--project-dir", str(wp.root)).code == 0
    wp.sql(f"UPDATE {wp.schema}.src SET name = 'x' WHERE id = 7")

    planned = retl_cli("plan", "people", "--json", "--project-dir", str(wp.root))
    text = retl_cli("plan", "people", "--project-dir", str(wp.root))
    ran = retl_cli("run", "people", "--json", "--project-dir", str(wp.root))

    (document,) = planned.json()["syncs"]
    assert document["fetched_rows"] == 1
    assert document["counts"]["update"] == 1 and document["counts"]["unchanged"] == 49
    assert "fetched 1 of 50 rows from the warehouse" in " ".join(text.out.split())
    assert ran.code == 0 and ran.json()["runs"][0]["counts"]["update"] == 1
    assert wp.destination() == wp.source()


@pytest.mark.postgres
def test_planning_creates_nothing_in_the_warehouse(wp: WarehouseProject) -> None:
    wp.write_sync()
    fill(wp, 3)

    assert wp.plan().counts.create == 3
    assert wp.rows(
        f"SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{wp.state_schema}'"
    ) == [(0,)]


@pytest.mark.postgres
def test_a_missing_create_grant_is_an_error_that_shows_the_statement(
    wp: WarehouseProject,
) -> None:
    role = f"retl_ro_{uuid.uuid4().hex[:8]}"
    wp.sql(
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA {wp.schema} TO {role}",
        f"GRANT SELECT ON {wp.schema}.src TO {role}",
    )
    try:
        wp.write_sync()
        fill(wp, 2)
        limited = wp.url.replace("postgres@", f"{role}@", 1)
        config = yaml.safe_load((wp.root / "retl.yml").read_text())
        config["warehouses"]["wh"]["url"] = limited
        (wp.root / "retl.yml").write_text(yaml.safe_dump(config))
        engine = wp.engine()

        with pytest.raises(StateError) as raised, engine.state_backend("people") as backend:
            backend.open(engine_connection(), engine.target(engine.sync("people")), writable=True)

        assert f"cannot create the state schema {wp.state_schema}" in raised.value.message
        assert raised.value.hint is not None
        assert f'CREATE SCHEMA "{wp.state_schema}" AUTHORIZATION "{role}";' in raised.value.hint
        outcome = wp.run()
        assert outcome.status == "failed"
        assert f"cannot create the state schema {wp.state_schema}" in (outcome.error or "")
        assert "CREATE SCHEMA" in (outcome.hint or "")
    finally:
        wp.sql(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.mark.postgres
def test_a_sync_on_another_warehouse_is_refused_clearly(wp: WarehouseProject) -> None:
    config = yaml.safe_load((wp.root / "retl.yml").read_text())
    config["warehouses"]["other"] = {"url": "duckdb:///:memory:"}
    (wp.root / "retl.yml").write_text(yaml.safe_dump(config))
    wp.write_sync(warehouse="other", source={"sql": "select 1 as id, 'a' as name"})

    outcome = wp.run()
    problems = wp.engine().validate()

    assert outcome.status == "failed"
    assert "reads warehouse 'other'" in (outcome.error or "")
    assert [p.field for p in problems] == ["warehouse"]
    assert "keeps state in warehouse 'wh'" in problems[0].message


# --------------------------------------------------------------------------- kills mid-run

SLOW_TRIGGER = """
CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$;
CREATE TRIGGER slow AFTER INSERT OR UPDATE ON {schema}.dst
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.slow();
"""


@pytest.mark.postgres
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_mid_way_loses_no_acknowledged_row(wp: WarehouseProject, signum: int) -> None:
    wp.write_sync(batch_size=10)
    fill(wp, 300)
    wp.sql(SLOW_TRIGGER.format(schema=wp.schema))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.Popen(
        [sys.executable, "-m", "reverse_etl", "run", "people", "--project-dir", str(wp.root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(wp.state_keys()) < 50 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signum)
    _, err = run.communicate(timeout=60)

    assert run.returncode == (-9 if signum == signal.SIGKILL else 143), err
    acknowledged = wp.state_keys()
    delivered = wp.destination()
    assert 50 <= len(acknowledged) < 300
    # Every acknowledged record is in the destination with the value that was acknowledged.
    assert {int(k) for k in acknowledged} <= set(delivered)
    assert all(delivered[int(k)] == f"name {k}" for k in acknowledged)

    wp.sql(f"DROP TRIGGER slow ON {wp.schema}.dst")
    again = wp.run()
    assert again.status == "success", again.error
    # Exactly once: batches that committed after the last state write are recorded from their
    # delivery markers, so the next run creates exactly what the destination lacks.
    assert again.counts["create"] == 300 - len(delivered)
    assert wp.destination() == wp.source()
    assert wp.state_keys() == {str(i) for i in range(1, 301)}


# --------------------------------------------------------------------------- DuckDB warehouse


def test_the_duckdb_warehouse_keeps_state_in_its_own_schema(
    tmp_path: Path, memory_destination: dict[str, Any], clean_env: None
) -> None:
    root = tmp_path / "project"
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
                "destinations": {"mem": {"type": "memory", "store": "whstate"}},
                "state": {"backend": "warehouse", "warehouse": "wh"},
            }
        )
    )
    (root / "syncs" / "people.yml").write_text(
        yaml.safe_dump(
            {
                "warehouse": "wh",
                "source": {"sql": "select id, name from src"},
                "destination": {"name": "mem", "object": "contacts"},
                "mode": "upsert",
                "primary_key": "id",
                "on_removed": "delete",
                "allow_destructive": True,
                "mapping": {"id": "id", "name": "name"},
            }
        )
    )

    def warehouse(*statements: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(root / "wh.duckdb"))
        try:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                rows = con.execute(statement).fetchall()
            return rows
        finally:
            con.close()

    warehouse("CREATE TABLE src AS SELECT range AS id, 'n' || range AS name FROM range(1, 101)")

    def run() -> Any:
        engine = Engine(load_project(root))
        return engine.run(engine.sync("people"), RunOptions())

    assert run().status == "success"
    warehouse("UPDATE src SET name = 'changed' WHERE id = 10", "DELETE FROM src WHERE id = 11")
    engine = Engine(load_project(root))
    plan = engine.plan(engine.sync("people"))
    assert (plan.counts.update, plan.counts.delete, plan.fetched_rows) == (1, 1, 2)
    assert run().status == "success"

    store = memory_destination["whstate"].rows()
    assert {int(k): r["name"] for k, r in store.items()} == {
        i: ("changed" if i == 10 else f"n{i}") for i in range(1, 101) if i != 11
    }
    keys = warehouse("SELECT count(*) FROM retl_state.retl_snapshot WHERE sync = 'people'")
    assert keys == [(99,)]


@pytest.mark.postgres
def test_rejected_rows_stay_out_of_state_and_are_retried_from_the_local_dlq(
    wp: WarehouseProject,
) -> None:
    wp.write_sync(limits={"max_row_error_ratio": 0.5})
    fill(wp, 4)
    wp.sql(f"ALTER TABLE {wp.schema}.dst ADD CONSTRAINT small CHECK (id < 4)")

    first = wp.run()

    assert first.status == "success", first.error
    assert first.counts["rejected"] == 1
    assert wp.state_keys() == {"1", "2", "3"}
    letters = wp.engine().dead_letters.keys("people")
    assert letters == ["4"]
    # The source did not change, but the dead letter is sent again (and fails again).
    assert wp.plan().counts.create == 1
    wp.sql(f"ALTER TABLE {wp.schema}.dst DROP CONSTRAINT small")
    only = wp.plan(only_dead_letters=True)
    assert (only.counts.create, only.counts.unchanged, only.fetched_rows) == (1, 0, 1)

    second = wp.run()

    assert second.status == "success" and second.counts["create"] == 1
    assert wp.engine().dead_letters.keys("people") == []
    assert wp.destination() == wp.source()


@pytest.mark.postgres
def test_a_dead_letter_whose_row_left_the_source_is_forgotten(wp: WarehouseProject) -> None:
    wp.write_sync(limits={"max_row_error_ratio": 0.5})
    fill(wp, 4)
    wp.sql(f"ALTER TABLE {wp.schema}.dst ADD CONSTRAINT small CHECK (id < 4)")
    assert wp.run().counts["rejected"] == 1
    wp.sql(f"DELETE FROM {wp.schema}.src WHERE id = 4")

    outcome = wp.run()

    assert outcome.status == "success" and outcome.plan.counts.to_send == 0
    assert wp.engine().dead_letters.keys("people") == []


@pytest.mark.postgres
def test_a_saved_plan_applies_and_goes_stale_like_a_local_one(
    wp: WarehouseProject, retl_cli: Callable[..., Any]
) -> None:
    wp.write_sync()
    fill(wp, 5)
    saved = wp.root / "plan.json"
    root = ("--project-dir", str(wp.root))
    assert retl_cli("plan", "people", "--out", str(saved), *root).code == 0

    applied = retl_cli("run", "--plan", str(saved), "--json", *root)
    stale = retl_cli("run", "--plan", str(saved), "--json", *root)

    assert applied.code == 0 and applied.json()["runs"][0]["counts"]["create"] == 5
    assert stale.code == 1 and "plan is stale" in stale.json()["runs"][0]["error"]
