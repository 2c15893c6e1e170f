"""The `sql` destination's MariaDB/MySQL bulk path (LOAD DATA LOCAL INFILE + one statement):
hostile values arrive exactly, every action works, and each bad record is rejected with the
database's message while the rest of its batch lands."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from reverse_etl.destinations import Batch, build_destination
from reverse_etl.destinations.sql import SqlDestination

pytestmark = pytest.mark.mysql

HOSTILE_TEXT = [
    None,
    "",
    "NULL",
    "\\N",
    "\\",
    "ends with a backslash \\",
    "tab\tnewline\ncarriage\rreturn",
    "quotes \" ' ` and , ; commas",
    "nul \x00 char",
    "unicode é ✓ 漢字 🚀",
    "x" * 100_000,
]


@dataclass
class MariaDB:
    dest: SqlDestination
    engine: sa.Engine
    table: str

    def rows(self, columns: str = "*") -> list[tuple[Any, ...]]:
        with self.engine.begin() as conn:
            query = f"SELECT {columns} FROM {self.table} ORDER BY 1"
            return [tuple(r) for r in conn.exec_driver_sql(query)]

    def sql(self, statement: str) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(statement)


@pytest.fixture
def maria(mysql_url: str, tmp_path: Path) -> Iterator[MariaDB]:
    engine = sa.create_engine(mysql_url)
    table = f"load_{uuid.uuid4().hex[:10]}"
    database = MariaDB(_destination(mysql_url, tmp_path), engine, table)
    database.sql(
        f"""CREATE TABLE {table} (
            id BIGINT PRIMARY KEY,
            note LONGTEXT CHARACTER SET utf8mb4,
            code VARCHAR(4),
            score INT NOT NULL DEFAULT 0 CHECK (score >= 0),
            amount DECIMAL(10, 2),
            ratio DOUBLE,
            active BOOLEAN,
            at DATETIME(6),
            born DATE,
            blob_value BLOB,
            traits JSON
        )"""
    )
    with database.dest:
        yield database
    database.sql(f"DROP TABLE IF EXISTS {table}")
    engine.dispose()


def _destination(url: str, root: Path, **options: Any) -> SqlDestination:
    dest = build_destination("app_db", {"type": "sql", "url": url, **options}, root)
    assert isinstance(dest, SqlDestination)
    dest.retry_wait_seconds = 0  # type: ignore[misc]
    return dest


def batch(object: str, action: Any, key: str | None, **columns: Any) -> Batch:
    return Batch(object=object, action=action, key_field=key, records=pa.table(columns))


def hostile_columns() -> dict[str, pa.Array]:
    n = len(HOSTILE_TEXT)
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    return {
        "id": pa.array(range(1, n + 1), pa.int64()),
        "note": pa.array(HOSTILE_TEXT),
        "amount": pa.array([Decimal("-0.05"), None, *[Decimal("12.30")] * (n - 2)]),
        "ratio": pa.array([0.1 + 0.2, None, 1e300, *[-0.0] * (n - 3)]),
        "active": pa.array([True, False, None, *[True] * (n - 3)]),
        "at": pa.array([stamp, None, *[stamp] * (n - 2)], pa.timestamp("us", tz="UTC")),
        "born": pa.array([dt.date(1990, 1, 31), None, *[dt.date(1, 1, 1)] * (n - 2)]),
        "blob_value": pa.array([b"\x00\t\n\\N\r\xff", None, b"", *[b"x"] * (n - 3)]),
        "traits": pa.array([[1, 2], None, [], *[[3]] * (n - 3)], pa.list_(pa.int64())),
    }


def expected_rows(columns: dict[str, pa.Array]) -> list[tuple[Any, ...]]:
    values = {name: column.to_pylist() for name, column in columns.items()}
    values["at"] = [None if v is None else v.replace(tzinfo=None) for v in values["at"]]
    values["active"] = [None if v is None else int(v) for v in values["active"]]
    values["traits"] = [None if v is None else str(v).replace(" ", "") for v in values["traits"]]
    return list(zip(*values.values(), strict=True))


SELECTED = "id, note, amount, ratio, active, at, born, blob_value, REPLACE(traits, ' ', '')"


@pytest.mark.parametrize("action", ["insert", "upsert"])
def test_hostile_values_arrive_exactly(action: str, maria: MariaDB) -> None:
    columns = hostile_columns()

    result = maria.dest.deliver(batch(maria.table, action, "id", **columns))

    assert result.rejected == {}
    assert maria.rows(SELECTED) == expected_rows(columns)


def test_update_sets_hostile_values_and_rejects_missing_records(maria: MariaDB) -> None:
    columns = hostile_columns()
    ids = columns["id"].to_pylist()
    maria.sql(
        f"INSERT INTO {maria.table} (id, note) VALUES " + ", ".join(f"({i}, 'old')" for i in ids)
    )
    missing = pa.array([len(ids) + 1], pa.int64())
    columns = {
        name: pa.concat_arrays([column, pa.array([None], column.type)])
        if name != "id"
        else pa.concat_arrays([column, missing])
        for name, column in columns.items()
    }

    result = maria.dest.deliver(batch(maria.table, "update", "id", **columns))

    assert result.rejected == {len(ids): f"no record with id = '{len(ids) + 1}' in {maria.table}"}
    expected = expected_rows({n: c.slice(0, len(ids)) for n, c in columns.items()})
    assert maria.rows(SELECTED) == expected


def test_upsert_updates_existing_records_and_creates_new_ones(maria: MariaDB) -> None:
    maria.sql(f"INSERT INTO {maria.table} (id, note, score) VALUES (1, 'old', 5)")

    result = maria.dest.deliver(batch(maria.table, "upsert", "id", id=[1, 2], note=["new", None]))

    assert result.rejected == {}
    assert maria.rows("id, note, score") == [(1, "new", 5), (2, None, 0)]


def test_delete_removes_records_and_an_absent_one_is_no_error(maria: MariaDB) -> None:
    maria.sql(f"INSERT INTO {maria.table} (id) VALUES (1), (2), (3)")

    result = maria.dest.deliver(batch(maria.table, "delete", "id", id=[1, 3, 99]))

    assert result.rejected == {}
    assert maria.rows("id") == [(2,)]


def test_bad_records_are_rejected_with_the_database_message_and_the_rest_land(
    maria: MariaDB,
) -> None:
    n = 3000
    score: list[int | None] = [1] * n
    score[10], score[1500] = -1, None  # CHECK constraint; NOT NULL
    ids = list(range(n))
    ids[2999] = 5  # a duplicate key in an insert
    result = maria.dest.deliver(
        batch(maria.table, "insert", None, id=ids, score=pa.array(score, pa.int64()))
    )

    assert sorted(result.rejected) == [10, 1500, 2999]
    assert "CONSTRAINT" in result.rejected[10] and "failed" in result.rejected[10]
    assert result.rejected[1500] == "Column 'score' cannot be null"
    assert result.rejected[2999] == "Duplicate entry '5' for key 'PRIMARY'"
    assert maria.rows("count(*)") == [(n - 3,)]


def test_values_the_load_would_alter_are_rejected_not_stored_altered(maria: MariaDB) -> None:
    result = maria.dest.deliver(
        batch(
            maria.table,
            "upsert",
            "id",
            id=[1, 2, 3, 4, 5],
            code=["ok", "too long", "ok", "ok", "ok"],
            score=pa.array(["1", "2", "x", "", "5"]),
            ratio=pa.array([1.0, 2.0, 3.0, 4.0, float("nan")]),
        )
    )

    assert sorted(result.rejected) == [1, 2, 3, 4]
    assert result.rejected[4] == "column 'ratio' holds NaN or infinity, which MySQL cannot store"
    assert "Data too long for column 'code'" in result.rejected[1]
    assert "Incorrect integer value: 'x'" in result.rejected[2]
    assert "Incorrect integer value: ''" in result.rejected[3]
    assert maria.rows("id, code, score, ratio") == [(1, "ok", 1, 1.0)]


def test_bulk_load_off_sends_the_same_values_with_executemany(
    maria: MariaDB, mysql_url: str, tmp_path: Path
) -> None:
    columns = hostile_columns()
    del columns["note"]  # NUL characters and 100k texts are the bulk path's own concern

    with _destination(mysql_url, tmp_path, bulk_load=False) as dest:
        result = dest.deliver(batch(maria.table, "insert", None, **columns))

    assert result.rejected == {}
    assert maria.rows(SELECTED.replace("note, ", "")) == expected_rows(columns)


def test_a_client_or_server_without_local_infile_falls_back_with_a_warning(
    maria: MariaDB, mysql_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = mysql_url + ("&" if "?" in mysql_url else "?") + "local_infile=0"
    with caplog.at_level(logging.WARNING), _destination(url, tmp_path) as dest:
        first = dest.deliver(batch(maria.table, "insert", None, id=[1, 2], note=["a\tb", None]))
        second = dest.deliver(batch(maria.table, "insert", None, id=[3], note=["c"]))

    assert first.rejected == second.rejected == {}
    assert maria.rows("id, note") == [(1, "a\tb"), (2, None), (3, "c")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refuses LOAD DATA LOCAL INFILE" in warnings[0]
    assert "SET GLOBAL local_infile = 1" in warnings[0]


# -- first load: LOAD DATA straight into an empty table -------------------------------------


@pytest.fixture
def statements(maria: MariaDB) -> Iterator[str]:
    """A log table the target's insert trigger fills with how each record arrived: 'stage'
    when the session holds the stage table retl merges from, else 'straight'."""
    log = f"{maria.table}_log"
    maria.sql(f"CREATE TABLE {log} (statement VARCHAR(16))")
    maria.sql(
        f"""CREATE TRIGGER {maria.table}_t AFTER INSERT ON {maria.table} FOR EACH ROW
        BEGIN
          DECLARE staged INT DEFAULT 1;
          DECLARE CONTINUE HANDLER FOR 1146 SET staged = 0;
          DO (SELECT 1 FROM _retl_stage LIMIT 1);
          INSERT INTO {log} VALUES (IF(staged, 'stage', 'straight'));
        END"""
    )
    yield log
    maria.sql(f"DROP TABLE IF EXISTS {log}")


def written_by(maria: MariaDB, log: str) -> list[str]:
    with maria.engine.begin() as conn:
        return [r[0] for r in conn.exec_driver_sql(f"SELECT DISTINCT statement FROM {log}")]


def first_load(object: str, action: Any, key: str | None, run_id: str, **columns: Any) -> Batch:
    return Batch(object, action, key, pa.table(columns), run_id=run_id, first_load=True)


@pytest.mark.parametrize("action", ["insert", "upsert"])
def test_a_first_load_into_an_empty_table_loads_straight_into_it(
    action: str, maria: MariaDB, statements: str
) -> None:
    columns = hostile_columns()

    result = maria.dest.deliver(first_load(maria.table, action, "id", "run-1", **columns))

    assert result.rejected == {}
    assert written_by(maria, statements) == ["straight"]
    assert maria.rows(SELECTED) == expected_rows(columns)


def test_a_first_load_with_bad_records_takes_the_stage_path_and_rejects_only_them(
    maria: MariaDB, statements: str
) -> None:
    result = maria.dest.deliver(
        first_load(
            maria.table,
            "insert",
            None,
            "run-1",
            id=[1, 2, 3, 1, 5],
            code=["ok", "too long", "ok", "ok", "ok"],
            score=pa.array([1, 2, 3, 4, None], pa.int64()),
        )
    )

    assert sorted(result.rejected) == [1, 3, 4]
    assert "Data too long for column 'code'" in result.rejected[1]
    assert result.rejected[3] == "Duplicate entry '1' for key 'PRIMARY'"
    assert result.rejected[4] == "Column 'score' cannot be null"
    assert maria.rows("id, code, score") == [(1, "ok", 1), (3, "ok", 3)]
    assert written_by(maria, statements) == ["stage"]  # the straight load was rolled back


def test_a_first_load_into_a_table_with_records_merges_without_duplicates(
    maria: MariaDB, statements: str
) -> None:
    maria.sql(f"INSERT INTO {maria.table} (id, note, score) VALUES (1, 'old', 5)")
    maria.sql(f"DELETE FROM {statements}")

    result = maria.dest.deliver(
        first_load(maria.table, "upsert", "id", "run-1", id=[1, 2], note=["new", "b"])
    )

    assert result.rejected == {}
    assert maria.rows("id, note, score") == [(1, "new", 5), (2, "b", 0)]
    assert written_by(maria, statements) == ["stage"]


def test_a_key_another_writer_added_mid_load_is_updated_not_duplicated(
    maria: MariaDB, statements: str
) -> None:
    maria.dest.deliver(first_load(maria.table, "upsert", "id", "run-1", id=[1, 2]))
    maria.sql(f"INSERT INTO {maria.table} (id, note) VALUES (3, 'someone else')")

    result = maria.dest.deliver(
        first_load(maria.table, "upsert", "id", "run-1", id=[3, 4], note=["c", "d"])
    )

    assert result.rejected == {}
    assert maria.rows("id, note") == [(1, None), (2, None), (3, "c"), (4, "d")]


def test_a_loaded_mysql_destination_takes_larger_batches_by_default(
    mysql_url: str, tmp_path: Path
) -> None:
    def default(url: str, **options: Any) -> int:
        config = {"type": "sql", "url": url, **options}
        return build_destination("app_db", config, tmp_path).default_batch_size()

    assert default(mysql_url) == 50_000
    assert default(mysql_url, bulk_load=False) == SqlDestination.capabilities.default_batch_size
    assert default("sqlite:///app.db") == SqlDestination.capabilities.default_batch_size == 5_000
