"""The `sql` destination on real databases: SQLite and DuckDB files, MariaDB, and PostgreSQL
through SQLAlchemy. Every action, per-record rejection, types, checks and create_tables."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from reverse_etl.destinations import Batch, build_destination, connector_for
from reverse_etl.destinations.sql import SqlDestination
from reverse_etl.errors import DestinationError

BACKENDS = ["sqlite", "duckdb", "mysql", "postgresql"]


@dataclass
class Database:
    """One test database: the destination under test, a side connection, and a table name."""

    kind: str
    dest: SqlDestination
    engine: sa.Engine
    table: str  # name of the `contacts` table, as the destination's object
    _created: list[str]

    def sql(self, statement: str) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(statement)
            return result.fetchall() if result.returns_rows else []

    def create(self, name: str, ddl: str) -> str:
        """Create a table from a column list (`{ts}` becomes the dialect's timestamp type)."""
        ts = "DATETIME(6)" if self.kind == "mysql" else "TIMESTAMP"
        self.sql(f"CREATE TABLE {name} ({ddl.format(ts=ts)})")
        self._created.append(name)
        return name

    def rows(self, columns: str = "*", table: str | None = None) -> list[tuple[Any, ...]]:
        return [
            tuple(r) for r in self.sql(f"SELECT {columns} FROM {table or self.table} ORDER BY 1")
        ]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    kind = request.param
    prefix = ""
    if kind == "sqlite":
        url = "sqlite:///out/app.sqlite"
    elif kind == "duckdb":
        url = "duckdb:///out/app.duckdb"
    elif kind == "mysql":
        url = request.getfixturevalue("mysql_url")
    else:
        url = request.getfixturevalue("postgres_url").replace(
            "postgresql://", "postgresql+psycopg://"
        )
        prefix = request.getfixturevalue("pg_schema") + "."
    dest = build_destination("app_db", {"type": "sql", "url": url}, tmp_path)
    assert isinstance(dest, SqlDestination)
    dest.retry_wait_seconds = 0  # type: ignore[misc]
    side = sa.create_engine(
        url if kind in ("mysql", "postgresql") else url.replace("///", f"///{tmp_path}/")
    )
    database = Database(kind, dest, side, "", [])
    database.table = database.create(
        prefix + unique("contacts"),
        "id INTEGER PRIMARY KEY, email VARCHAR(100), score INTEGER CHECK (score >= 0), "
        "amount DECIMAL(10, 2), active BOOLEAN, updated_at {ts}, born DATE",
    )
    with dest:
        yield database
    for name in reversed(database._created):
        database.sql(f"DROP TABLE IF EXISTS {name}")
    side.dispose()


def batch(object: str, action: Any, key: str | None, **columns: Any) -> Batch:
    return Batch(object=object, action=action, key_field=key, records=pa.table(columns))


def test_is_registered_as_type_sql() -> None:
    assert connector_for("sql") is SqlDestination


def test_relative_sqlite_and_duckdb_paths_resolve_from_the_project_root(tmp_path: Path) -> None:
    for url in ("sqlite:///demo_output/app.sqlite", "duckdb:///demo_output/app.duckdb"):
        config = {"type": "sql", "url": url, "create_tables": True}
        with build_destination("out", config, tmp_path) as dest:
            records = pa.table({"id": [1]})
            dest.prepare("t", records.schema, "id")
            assert dest.deliver(Batch("t", "upsert", "id", records)).rejected == {}
    assert sorted(p.name for p in (tmp_path / "demo_output").iterdir()) == [
        "app.duckdb",
        "app.sqlite",
    ]


def test_insert_lands_values_of_every_common_type(db: Database) -> None:
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    result = db.dest.deliver(
        batch(
            db.table,
            "insert",
            None,
            id=pa.array([1, 2], pa.int64()),
            email=["", None],
            score=pa.array([10, None], pa.int32()),
            amount=pa.array([Decimal("12.30"), None], pa.decimal128(10, 2)),
            active=[True, False],
            updated_at=pa.array([stamp, None], pa.timestamp("us", tz="UTC")),
            born=[dt.date(1990, 1, 31), None],
        )
    )

    assert result.rejected == {}
    first, second = db.rows()
    assert first[:3] == (1, "", 10)
    assert Decimal(str(first[3])) == Decimal("12.3")
    assert bool(first[4]) is True and bool(second[4]) is False
    # UTC, as a naive timestamp, with its microseconds
    assert str(first[5]).startswith("2024-05-06 07:08:09.123456")
    assert str(first[6]) == "1990-01-31"
    assert second[1:4] == (None, None, None) and second[5:] == (None, None)


def test_upsert_creates_new_records_and_updates_existing_ones(db: Database) -> None:
    db.sql(f"INSERT INTO {db.table} (id, email, score) VALUES (1, 'old@x', 5)")

    result = db.dest.deliver(batch(db.table, "upsert", "id", id=[1, 2], email=["new@x", "b@x"]))

    assert result.rejected == {}
    assert db.rows("id, email, score") == [(1, "new@x", 5), (2, "b@x", None)]


def test_update_never_creates_missing_records(db: Database) -> None:
    db.sql(f"INSERT INTO {db.table} (id, email) VALUES (1, 'a'), (3, 'c')")

    result = db.dest.deliver(
        batch(db.table, "update", "id", id=[1, 42, 3, 43], email=["A", "B", "C", "D"])
    )

    assert result.rejected == {
        1: f"no record with id = '42' in {db.table}",
        3: f"no record with id = '43' in {db.table}",
    }
    assert db.rows("id, email") == [(1, "A"), (3, "C")]


def test_update_counts_a_record_as_found_even_when_nothing_changes(db: Database) -> None:
    db.sql(f"INSERT INTO {db.table} (id, email) VALUES (1, 'same')")

    result = db.dest.deliver(batch(db.table, "update", "id", id=[1], email=["same"]))

    assert result.rejected == {}


def test_delete_removes_records_and_an_already_missing_record_counts_as_success(
    db: Database,
) -> None:
    db.sql(f"INSERT INTO {db.table} (id) VALUES (1), (2), (3)")

    result = db.dest.deliver(batch(db.table, "delete", "id", id=[1, 3, 99]))

    assert result.rejected == {}
    assert db.rows("id") == [(2,)]


def test_a_check_constraint_rejects_exactly_the_offending_records(db: Database) -> None:
    ids = list(range(200))
    bad = {7, 8, 120, 199}

    result = db.dest.deliver(
        batch(db.table, "upsert", "id", id=ids, score=[-1 if i in bad else i for i in ids])
    )

    assert set(result.rejected) == bad
    assert all("constraint" in message.lower() for message in result.rejected.values())
    assert {r[0] for r in db.rows("id")} == set(ids) - bad


def test_a_duplicate_key_on_insert_is_a_rejected_record(db: Database) -> None:
    db.sql(f"INSERT INTO {db.table} (id) VALUES (1)")

    result = db.dest.deliver(batch(db.table, "insert", None, id=[1, 2], email=["dup", "new"]))

    assert list(result.rejected) == [0]
    message = result.rejected[0].lower()
    assert ("unique" in message or "duplicate" in message) and "\n" not in message
    assert db.rows("id, email") == [(1, None), (2, "new")]


def test_fields_describe_columns_and_unique_keys(db: Database) -> None:
    db.sql(f"CREATE UNIQUE INDEX {unique('ux')} ON {db.table} (email)")

    fields = {f.name: f for f in db.dest.fields(db.table)}

    assert list(fields) == ["id", "email", "score", "amount", "active", "updated_at", "born"]
    assert fields["id"].unique and not fields["id"].nullable
    assert fields["email"].unique and fields["email"].nullable
    assert not fields["score"].unique
    assert "INT" in fields["score"].type.upper()


def test_a_not_null_column_without_a_default_is_required(db: Database) -> None:
    name = db.create(
        db.table + "_req",
        "id INTEGER PRIMARY KEY, n INTEGER NOT NULL, d INTEGER NOT NULL DEFAULT 3",
    )

    fields = {f.name: f for f in db.dest.fields(name)}

    assert {n: f.required for n, f in fields.items()} == {"id": True, "n": True, "d": False}
    assert all(f.writable for f in fields.values())


@pytest.mark.mysql
def test_a_mariadb_generated_column_is_not_writable_and_check_names_it(
    mysql_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(mysql_url)
    name = unique("generated")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (id INT PRIMARY KEY AUTO_INCREMENT, a INT NOT NULL, "
            "b INT AS (a * 2) STORED)"
        )
    try:
        with build_destination("m", {"type": "sql", "url": mysql_url}, tmp_path) as dest:
            fields = {f.name: f for f in dest.fields(name)}
            problems = dest.check(name, ["a", "b"], None, "insert")
        assert {n: (f.required, f.writable) for n, f in fields.items()} == {
            "id": (False, True),  # AUTO_INCREMENT
            "a": (True, True),
            "b": (False, False),
        }
        assert problems == [
            f"column 'b' of {name} is computed by the database (generated or an identity "
            "always generated): it cannot be written; remove it from the mapping"
        ]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()


def test_objects_list_the_tables(db: Database) -> None:
    assert db.table in db.dest.objects()


def test_check_reports_unknown_fields_and_an_upsert_key_that_is_not_unique(db: Database) -> None:
    assert db.dest.check(db.table, ["id", "email"], "id", "upsert") == []
    assert db.dest.check(db.table, ["id", "emial"], "id", "upsert") == [
        f"column 'emial' does not exist on {db.table} (did you mean 'email'?)"
    ]
    [problem] = db.dest.check(db.table, ["id", "email"], "email", "upsert")
    assert problem.startswith(f"upsert needs a unique constraint or primary key on {db.table}")
    assert db.dest.check(db.table, ["email"], None, "delete") == [
        "delete needs a key field to find the records in the table"
    ]


def test_a_missing_table_is_a_destination_error_with_a_hint(db: Database) -> None:
    with pytest.raises(DestinationError) as error:
        db.dest.fields(db.table + "x")

    assert error.value.message == f"table {db.table}x does not exist in destination 'app_db'"
    assert error.value.hint is not None and f"did you mean {db.table}?" in error.value.hint


def test_odd_column_names_are_quoted(db: Database) -> None:
    q = '"' if db.kind != "mysql" else "`"
    name = db.create(
        db.table + "_odd", f"{q}Customer ID{q} INTEGER PRIMARY KEY, {q}select{q} VARCHAR(10)"
    )
    records = {"Customer ID": [1, 2], "select": ["a", "b"]}

    assert db.dest.deliver(Batch(name, "upsert", "Customer ID", pa.table(records))).rejected == {}
    update = pa.table({"Customer ID": [2], "select": ["u"]})
    assert db.dest.deliver(Batch(name, "update", "Customer ID", update)).rejected == {}
    delete = pa.table({"Customer ID": [1]})
    assert db.dest.deliver(Batch(name, "delete", "Customer ID", delete)).rejected == {}
    assert db.rows("*", name) == [(2, "u")]


def test_create_tables_creates_a_missing_table_with_the_key_as_primary_key(db: Database) -> None:
    db.dest.options.create_tables = True
    name = db.table + "_new"
    db._created.append(name)
    records = pa.table(
        {
            "key": pa.array(["a", "b"], pa.string()),
            "n": pa.array([1, 2], pa.int64()),
            "amount": pa.array([Decimal("1.50"), None], pa.decimal128(12, 2)),
            "at": pa.array(
                [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), None], pa.timestamp("us", "UTC")
            ),
            "ok": [True, None],
        }
    )

    assert db.dest.check(name, records.column_names, "key", "upsert") == []
    db.dest.prepare(name, records.schema, "key")
    result = db.dest.deliver(Batch(name, "upsert", "key", records))
    again = db.dest.deliver(Batch(name, "upsert", "key", records.slice(0, 1)))

    assert result.rejected == {} and again.rejected == {}
    assert [r[:2] for r in db.rows("*", name)] == [("a", 1), ("b", 2)]
    fields = {f.name: f for f in db.dest.fields(name)}
    assert fields["key"].unique


def test_prepare_refuses_a_missing_table_without_create_tables(db: Database) -> None:
    with pytest.raises(DestinationError, match="does not exist") as error:
        db.dest.prepare(db.table + "_nope", pa.schema([("id", pa.int64())]), "id")
    assert error.value.hint is not None and "create_tables: true" in error.value.hint


def test_upsert_without_a_unique_key_is_a_destination_error(db: Database) -> None:
    with pytest.raises(DestinationError, match="needs a unique constraint or primary key"):
        db.dest.deliver(batch(db.table, "upsert", "email", email=["a"]))


@pytest.mark.mysql
def test_mariadb_rejects_a_value_that_does_not_fit_with_its_message(
    mysql_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(mysql_url)
    name = unique("strict")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {name} (id INT PRIMARY KEY, n INT, code VARCHAR(3))")
    try:
        with build_destination("m", {"type": "sql", "url": mysql_url}, tmp_path) as dest:
            result = dest.deliver(
                batch(
                    name, "insert", None, id=[1, 2, 3], n=["1", "x", "3"], code=["a", "b", "long"]
                )
            )
        assert sorted(result.rejected) == [1, 2]
        assert "Incorrect integer value: 'x'" in result.rejected[1]
        assert "Data too long for column 'code'" in result.rejected[2]
        with engine.begin() as conn:
            assert conn.exec_driver_sql(f"SELECT id FROM {name}").fetchall() == [(1,)]
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()


def test_an_unreachable_database_is_a_destination_error_without_the_password(
    tmp_path: Path,
) -> None:
    config = {"type": "sql", "url": "mysql+pymysql://retl:s3cret@127.0.0.1:1/db"}
    dest = build_destination("app_db", config, tmp_path)
    assert isinstance(dest, SqlDestination)
    dest.retry_wait_seconds = 0  # type: ignore[misc]

    with pytest.raises(DestinationError) as error:
        dest.open()

    assert error.value.message.startswith("cannot use destination 'app_db'")
    assert "s3cret" not in error.value.message
    assert "retl:***@127.0.0.1:1/db" in error.value.message


def test_an_invalid_url_is_a_destination_error(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="not a valid SQLAlchemy URL"):
        build_destination("d", {"type": "sql", "url": "not a url"}, tmp_path)
