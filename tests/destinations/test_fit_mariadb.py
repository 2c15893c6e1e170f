"""The `sql` destination on MariaDB never stores a value altered: what LOAD DATA and INSERT
would round, cut or drop with only a note is rejected with what would have happened, on the
bulk path and on executemany alike (issue 15)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from reverse_etl.destinations import Batch, build_destination
from reverse_etl.errors import DestinationError

pytestmark = pytest.mark.mysql


@pytest.fixture
def table(mysql_url: str) -> Iterator[str]:
    engine = sa.create_engine(mysql_url)
    name = f"fit_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (id INT PRIMARY KEY, price DECIMAL(10,2), stamp DATETIME(6))"
        )
    yield name
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {name}")
    engine.dispose()


def stored(mysql_url: str, table: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")]
    engine.dispose()
    return rows


@pytest.mark.parametrize("bulk_load", [True, False])
def test_rounded_decimals_and_cut_nanoseconds_are_rejected_on_both_paths(
    mysql_url: str, table: str, tmp_path: Path, bulk_load: bool
) -> None:
    config = {"type": "sql", "url": mysql_url, "bulk_load": bulk_load}
    records = pa.table(
        {
            "id": [1, 2, 3],
            "price": pa.array([Decimal("1.5"), Decimal("1234.5678"), Decimal("2")]),
            "stamp": pa.array(
                [1_700_000_000_000_001_000, 1_700_000_000_000_000_000, 1_700_000_000_000_000_001],
                pa.timestamp("ns"),
            ),
        }
    )
    with build_destination("m", config, tmp_path) as dest:
        result = dest.deliver(Batch(table, "upsert", "id", records))

    assert result.rejected == {
        1: "price = 1234.5678 would be stored as 1234.57 in decimal(10,2): widen the column "
        "or round in the SQL",
        2: "stamp = '2023-11-14 22:13:20.000000001' would be stored as "
        "2023-11-14 22:13:20.000000 in datetime(6) (it keeps 6 fractional digits of a "
        "second): give the column more fractional digits or truncate in the SQL",
    }
    assert [r[:2] for r in stored(mysql_url, table)] == [(1, Decimal("1.50"))]


def test_a_name_longer_than_64_characters_is_refused(
    mysql_url: str, table: str, tmp_path: Path
) -> None:
    with build_destination("m", {"type": "sql", "url": mysql_url}, tmp_path) as dest:
        problems = dest.check("x" * 65, ["id"], "id", "upsert")
        with pytest.raises(DestinationError, match="has a name of 65 characters"):
            dest.prepare(table, pa.schema([("y" * 65, pa.int64())]), None)

    assert problems == [
        f"table '{'x' * 65}' has a name of 65 characters: MySQL/MariaDB names have at most "
        "64; use a shorter name"
    ]


@pytest.mark.parametrize("bulk_load", [True, False])
@pytest.mark.parametrize("action", ["upsert", "update", "delete"])
def test_a_key_matching_a_record_only_by_collation_leaves_it_untouched_on_both_paths(
    mysql_url: str, tmp_path: Path, bulk_load: bool, action: str
) -> None:
    engine = sa.create_engine(mysql_url)
    name = f"fit_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (k VARCHAR(10) CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_general_ci PRIMARY KEY, v INT)"
        )
        conn.exec_driver_sql(f"INSERT INTO {name} VALUES ('abc', 1), ('x', 1), ('same', 1)")
    columns: dict[str, Any] = {"k": ["ABC", "x ", "same"]}
    if action != "delete":
        columns["v"] = [2, 2, 2]
    config = {"type": "sql", "url": mysql_url, "bulk_load": bulk_load}
    try:
        with build_destination("m", config, tmp_path) as dest:
            result = dest.deliver(Batch(name, action, "k", pa.table(columns)))  # type: ignore[arg-type]
        after = stored(mysql_url, name)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()

    assert result.rejected == {
        0: "key 'ABC' would change the record 'abc', which is the same record under "
        "utf8mb4_general_ci (case- and trailing-space-insensitive): the record was not "
        "touched; make the keys match exactly, or use a binary collation for the key column",
        1: "key 'x ' would change the record 'x', which is the same record under "
        "utf8mb4_general_ci (case- and trailing-space-insensitive): the record was not "
        "touched; make the keys match exactly, or use a binary collation for the key column",
    }
    assert result.accepted == {2}
    same = [] if action == "delete" else [("same", 2)]
    assert after == [("abc", 1), *same, ("x", 1)]


def test_a_date_into_an_integer_column_is_rejected_not_stored_as_a_number(
    mysql_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(mysql_url)
    name = f"fit_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {name} (id INT PRIMARY KEY, n INT, day DATE)")
    records = pa.table(
        {
            "id": [1, 2, 3],
            "n": pa.array([dt.date(2024, 1, 2), None, None]),
            "day": pa.array([None, 20240102, None], pa.int64()),
        }
    )
    try:
        with build_destination("m", {"type": "sql", "url": mysql_url}, tmp_path) as dest:
            result = dest.deliver(Batch(name, "insert", None, records))
        after = stored(mysql_url, name)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()

    assert result.rejected == {
        0: "n = 2024-01-02 is a date or time, which int(11) does not hold as it is: map a "
        "column of a matching type, or convert it in the SQL",
        1: "day = 20240102 is a number, which date does not hold as it is: map a column of a "
        "matching type, or convert it in the SQL",
    }
    assert after == [(3, None, None)]


def test_a_key_the_same_record_as_one_sent_earlier_in_the_run_is_rejected_too(
    mysql_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(mysql_url)
    name = f"fit_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (k VARCHAR(10) CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_general_ci PRIMARY KEY, n INT)"
        )

    def send(dest: Any, run: str, key: str, n: float) -> dict[int, str]:
        records = pa.table({"k": [key], "n": [n]})
        return dict(dest.deliver(Batch(name, "upsert", "k", records, run_id=run)).rejected)

    try:
        with build_destination("m", {"type": "sql", "url": mysql_url}, tmp_path) as dest:
            # 'abc' is refused (a fraction into INT), so no record holds it: the collation
            # alone cannot tell that 'ABC', in the next batch, is the same record.
            assert list(send(dest, "run-1", "abc", 1.5)) == [0]
            later = send(dest, "run-1", "ABC", 2)
            next_run = send(dest, "run-2", "ABC", 2)
        after = stored(mysql_url, name)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()

    assert later == {
        0: "key 'ABC' is the same record as 'abc', sent earlier in this run, under "
        "utf8mb4_general_ci (case- and trailing-space-insensitive): make the keys differ by "
        "more than case and trailing spaces, or use a binary collation for the key column"
    }
    assert next_run == {}
    assert after == [("ABC", 2)]


@pytest.mark.parametrize("bulk_load", [True, False])
def test_text_the_database_would_round_or_cut_while_parsing_is_rejected(
    mysql_url: str, tmp_path: Path, bulk_load: bool
) -> None:
    engine = sa.create_engine(mysql_url)
    name = f"fit_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (id INT PRIMARY KEY, price DECIMAL(10,2), qty INT, day DATE)"
        )
    records = pa.table(
        {
            "id": [1, 2, 3, 4],
            "price": ["12.50", "1234.5678", None, None],
            "qty": ["3", None, "1.5", None],
            "day": ["2024-01-02", None, None, "2024-01-02 10:30:00"],
        }
    )
    config = {"type": "sql", "url": mysql_url, "bulk_load": bulk_load}
    try:
        with build_destination("m", config, tmp_path) as dest:
            result = dest.deliver(Batch(name, "insert", None, records))
        after = stored(mysql_url, name)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")
        engine.dispose()

    assert result.rejected == {
        1: "price = '1234.5678' would be stored as 1234.57 in decimal(10,2): widen the column "
        "or round in the SQL",
        2: "qty = '1.5' would be stored as 2 in int(11): widen the column or round in the SQL",
        3: "day = '2024-01-02 10:30:00' would be stored as 2024-01-02 in date (its time of day "
        "is lost): make the column a timestamp or cast to a date in the SQL",
    }
    assert after == [(1, Decimal("12.50"), 3, dt.date(2024, 1, 2))]
