"""Claims (issue 15, case 6): a run claims its target in the destination before it replays
markers and plans, and every batch it commits checks the claim in the batch's own transaction.
Once a later run has claimed the target, the earlier run's batch is rolled back whole (no data,
no marker) and it stops with TakenOverError; the later run's batches commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from reverse_etl.destinations import Batch, build_destination
from reverse_etl.destinations.base import Destination
from reverse_etl.destinations.ledger import Claim, ClaimHolder, DeliveryMarker
from reverse_etl.errors import TakenOverError

TARGET = "claims-target-write"


def batch(object: str, ids: list[int], claim: Claim, run: str, first_load: bool = False) -> Batch:
    keys = [str(i) for i in ids]
    acknowledgement = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "hash": pa.array([f"h{k}" for k in keys], pa.string()),
            "dest_id": pa.nulls(len(ids), pa.string()),
            "removed": pa.array([False] * len(ids), pa.bool_()),
        }
    )
    marker = DeliveryMarker(claim.sync, claim.target, run, 1, acknowledgement, claim)
    records = pa.table({"id": pa.array(ids, pa.int32()), "name": [f"n{i}" for i in ids]})
    return Batch(object, "insert", None, records, run_id=run, first_load=first_load, marker=marker)


class Database:
    """A keyless table in one test database, seen through two destinations (two machines)."""

    def __init__(self, config: dict[str, Any], side: sa.Engine, object: str, tmp_path: Path):
        self.a = build_destination("db", config, tmp_path)
        self.b = build_destination("db", config, tmp_path)
        self.side = side
        self.object = object

    def ids(self) -> list[int]:
        with self.side.connect() as conn:
            return sorted(int(r[0]) for r in conn.exec_driver_sql(f"SELECT id FROM {self.object}"))


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    kind = request.param
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("pg_schema")
        object = f"{schema}.events"
        config = {"type": "postgres", "url": url}
        side = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    elif kind == "mysql":
        url = request.getfixturevalue("mysql_url")
        object = f"claims_{uuid.uuid4().hex[:10]}"
        config = {"type": "sql", "url": url}
        side = sa.create_engine(url)
    else:
        (tmp_path / "out").mkdir()
        object = "events"
        config = {"type": "sql", "url": "sqlite:///out/app.sqlite"}
        side = sa.create_engine(f"sqlite:///{tmp_path}/out/app.sqlite")
    with side.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {object} (id INTEGER, name VARCHAR(20))")
    db = Database(config, side, object, tmp_path)
    try:
        with db.a, db.b:
            yield db
    finally:
        with side.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {object}")
        side.dispose()


def claim(dest: Destination, sync: str, object: str, run: str, pid: int) -> Claim:
    taken = dest.claim(sync, TARGET, object, f"db:{object}", ClaimHolder(run, "host-" + run, pid))
    assert taken is not None
    return taken


def test_a_batch_of_a_run_whose_target_was_claimed_since_is_rolled_back_and_stops_it(
    database: Database,
) -> None:
    sync = f"claims_{uuid.uuid4().hex[:8]}"
    a = claim(database.a, sync, database.object, "run-a", 101)
    assert database.a.deliver(batch(database.object, [1, 2], a, "run-a")).accepted == {0, 1}

    b = claim(database.b, sync, database.object, "run-b", 202)
    assert b.generation == a.generation + 1
    with pytest.raises(TakenOverError) as stopped:
        database.a.deliver(batch(database.object, [3, 4], a, "run-a"))

    message = stopped.value.message
    assert f"another run of sync '{sync}' took over target db:{database.object}" in message
    assert "from host-run-b (pid 202, run run-b)" in message
    assert "this run stopped without delivering more; its delivered batches are in state" in (
        message
    )
    # Nothing of the batch landed, not even its marker: the later run replays only batch 1.
    assert database.ids() == [1, 2]
    replayed = database.b.recover_markers(sync, TARGET)
    assert [e.run_id for e in replayed] == ["run-a"]
    assert replayed[0].acknowledgement().column("key").to_pylist() == ["1", "2"]

    database.b.forget_markers(sync, TARGET, b)
    assert database.b.deliver(batch(database.object, [3, 4], b, "run-b")).accepted == {0, 1}
    assert database.ids() == [1, 2, 3, 4]


def test_a_first_load_into_an_empty_table_is_fenced_too(database: Database) -> None:
    """The straight load of a first run (COPY / LOAD DATA into the empty table itself)."""
    sync = f"claims_{uuid.uuid4().hex[:8]}"
    a = claim(database.a, sync, database.object, "run-a", 101)
    claim(database.b, sync, database.object, "run-b", 202)

    with pytest.raises(TakenOverError):
        database.a.deliver(batch(database.object, [1, 2, 3], a, "run-a", first_load=True))

    assert database.ids() == []
    assert database.b.recover_markers(sync, TARGET) == []


def test_a_run_that_was_taken_over_cannot_forget_the_markers_of_the_run_that_took_over(
    database: Database,
) -> None:
    sync = f"claims_{uuid.uuid4().hex[:8]}"
    a = claim(database.a, sync, database.object, "run-a", 101)
    b = claim(database.b, sync, database.object, "run-b", 202)
    database.b.deliver(batch(database.object, [5], b, "run-b"))

    with pytest.raises(TakenOverError):
        database.a.forget_markers(sync, TARGET, a)

    assert [e.run_id for e in database.b.recover_markers(sync, TARGET)] == ["run-b"]
    database.b.forget_markers(sync, TARGET, b)
    assert database.b.recover_markers(sync, TARGET) == []


def test_claims_of_another_sync_on_the_same_table_are_independent(database: Database) -> None:
    first, second = (f"claims_{uuid.uuid4().hex[:8]}" for _ in range(2))
    a = claim(database.a, first, database.object, "run-a", 101)
    claim(database.b, second, database.object, "run-b", 202)

    assert database.a.deliver(batch(database.object, [7], a, "run-a")).accepted == {0}
    assert database.ids() == [7]
    database.a.forget_markers(first, TARGET, a)


@pytest.mark.postgres
def test_the_claims_table_is_no_object_to_sync_to(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {pg_schema}.events (id integer)")
    dest = build_destination("db", {"type": "postgres", "url": postgres_url}, tmp_path)
    with dest:
        claim(dest, f"claims_{uuid.uuid4().hex[:8]}", f"{pg_schema}.events", "run-a", 1)
        objects = dest.objects()
    assert f"{pg_schema}.events" in objects
    assert f"{pg_schema}.retl_claims" not in objects
