"""The `postgres` destination never stores a value altered, never lets two keys hit one record
and never lets PostgreSQL cut a name: each such record is rejected with what would have
happened, the rest of its batch lands (issue 15)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from reverse_etl.destinations import Batch, build_destination
from reverse_etl.destinations.postgres import PostgresDestination
from reverse_etl.errors import DestinationError

pytestmark = pytest.mark.postgres


@pytest.fixture
def sql(postgres_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def dest(postgres_url: str, tmp_path: Path) -> Iterator[PostgresDestination]:
    destination = build_destination("app_db", {"type": "postgres", "url": postgres_url}, tmp_path)
    assert isinstance(destination, PostgresDestination)
    with destination:
        yield destination


@pytest.fixture
def items(sql: psycopg.Connection[tuple[Any, ...]], pg_schema: str) -> str:
    sql.execute(
        f"""CREATE TABLE {pg_schema}.items (
            id integer PRIMARY KEY,
            ratio numeric(3, 2),
            qty integer,
            day date,
            stamp timestamp,
            stamp_ms timestamptz(3),
            code varchar(4),
            weight real
        )"""
    )
    return f"{pg_schema}.items"


def rows(sql: psycopg.Connection[tuple[Any, ...]], table: str) -> list[Any]:
    return sql.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def deliver(dest: PostgresDestination, table: str, action: Any, **columns: Any) -> Any:
    key = "id" if "id" in columns else "k"
    return dest.deliver(Batch(table, action, key, pa.table(columns)))


def test_a_decimal_with_more_decimals_than_the_column_keeps_is_rejected(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    result = deliver(
        dest,
        items,
        "upsert",
        id=[1, 2, 3],
        ratio=pa.array([Decimal("1.23"), Decimal("1.239"), Decimal("9.999")], pa.decimal128(6, 3)),
    )

    assert result.rejected == {
        1: "ratio = 1.239 would be stored as 1.24 in numeric(3,2): widen the column or round "
        "in the SQL",
        2: "ratio = 9.999 does not fit numeric(3,2), which holds less than 10^1: widen the "
        "column or round in the SQL",
    }
    assert [r[:2] for r in rows(sql, items)] == [(1, Decimal("1.23"))]


def test_fractions_into_an_integer_column_are_rejected_whole_numbers_land(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    result = deliver(dest, items, "insert", id=[1, 2, 3], qty=[2.0, 1.5, float("nan")])

    assert result.rejected[1] == (
        "qty = 1.5 would be stored as 2 in integer: widen the column or round in the SQL"
    )
    assert sorted(result.rejected) == [1, 2]
    assert [(r[0], r[2]) for r in rows(sql, items)] == [(1, 2)]


def test_a_timestamp_with_a_time_of_day_is_not_cut_to_a_date(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    days = pa.array(
        [dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2, 23, 30)], pa.timestamp("us", "UTC")
    )
    result = deliver(dest, items, "insert", id=[1, 2], day=days)

    assert result.rejected == {
        1: "day = 2024-01-02 23:30:00+00:00 would be stored as 2024-01-02 in date (its time of "
        "day is lost): make the column a timestamp or cast to a date in the SQL"
    }
    assert [(r[0], r[3]) for r in rows(sql, items)] == [(1, dt.date(2024, 1, 2))]


def test_nanoseconds_or_digits_beyond_the_columns_precision_are_rejected(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    base = 1_700_000_000_000_000_000
    result = deliver(
        dest,
        items,
        "insert",
        id=[1, 2, 3],
        stamp=pa.array([base + 1_000, base + 1_001, base], pa.timestamp("ns")),
        stamp_ms=pa.array([base, base, base + 123_400_000], pa.timestamp("ns", "UTC")),
    )

    assert result.rejected == {
        1: "stamp = '2023-11-14 22:13:20.000001001' would be stored as "
        "2023-11-14 22:13:20.000001 in timestamp without time zone (it keeps 6 fractional "
        "digits of a second): give the column more fractional digits or truncate in the SQL",
        2: "stamp_ms = '2023-11-14 22:13:20.123400000' would be stored as "
        "2023-11-14 22:13:20.123 in timestamp(3) with time zone (it keeps 3 fractional digits "
        "of a second): give the column more fractional digits or truncate in the SQL",
    }
    assert [r[0] for r in rows(sql, items)] == [1]


def test_text_whose_excess_is_spaces_is_rejected_not_trimmed(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    result = deliver(dest, items, "insert", id=[1, 2, 3], code=["abcd", "ab   ", "toolong"])

    assert result.rejected == {
        1: "code = 'ab   ' is 5 characters long, more than the 4 of character varying(4): it "
        "would be stored without its trailing spaces: widen the column or shorten the value "
        "in the SQL",
        2: "value too long for type character varying(4)",
    }
    assert [(r[0], r[6]) for r in rows(sql, items)] == [(1, "abcd")]


@pytest.fixture
def ci_keys(sql: psycopg.Connection[tuple[Any, ...]], pg_schema: str) -> str:
    sql.execute(
        f"CREATE COLLATION {pg_schema}.ci "
        "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    )
    sql.execute(
        f"CREATE TABLE {pg_schema}.keyed (k text COLLATE {pg_schema}.ci PRIMARY KEY, v text)"
    )
    return f"{pg_schema}.keyed"


def test_keys_equal_under_a_nondeterministic_collation_are_both_rejected(
    dest: PostgresDestination, sql: Any, ci_keys: str
) -> None:
    result = deliver(dest, ci_keys, "upsert", k=["abc", "ABC", "x"], v=["1", "2", "3"])

    assert sorted(result.rejected) == [0, 1]
    assert result.rejected[1].startswith(
        "key 'ABC' is the same record as 'abc' under ci (case-insensitive)"
    )
    assert rows(sql, ci_keys) == [("x", "3")]


def test_a_delete_matching_a_record_only_by_collation_does_not_touch_it(
    dest: PostgresDestination, sql: Any, ci_keys: str
) -> None:
    sql.execute(f"INSERT INTO {ci_keys} VALUES ('abc', 'live'), ('gone', 'old')")

    result = deliver(dest, ci_keys, "delete", k=["ABC", "gone"])

    assert list(result.rejected) == [0]
    assert "would change the record 'abc'" in result.rejected[0]
    assert rows(sql, ci_keys) == [("abc", "live")]


def test_a_name_longer_than_63_bytes_is_refused_before_postgresql_cuts_it(
    dest: PostgresDestination, pg_schema: str
) -> None:
    long_table = f"{pg_schema}.{'t' * 64}"
    schema = pa.schema([("id", pa.int64()), ("é" * 32, pa.string())])
    assert PostgresDestination.object_problem(long_table) is not None  # `retl validate`

    problems = dest.check(long_table, ["id"], "id", "upsert")
    assert problems == [
        f"table '{'t' * 64}' has a name of 64 bytes: PostgreSQL keeps only the first 63 "
        "bytes of a name, so two long names could be one table; use a name of at most 63 bytes"
    ]
    with pytest.raises(DestinationError, match="has a name of 64 bytes"):
        dest.prepare(f"{pg_schema}.ok", schema, "id")


def test_a_double_with_more_digits_than_a_real_keeps_is_rejected(
    dest: PostgresDestination, sql: Any, items: str
) -> None:
    result = deliver(dest, items, "insert", id=[1, 2, 3], weight=[0.1, 0.123456789, float("nan")])

    assert result.rejected == {
        1: "weight = 0.123456789 would be stored as 0.12345679 in real (a 32-bit float): make "
        "the column double precision or round in the SQL"
    }
    assert rows(sql, items)[0][7] == 0.1
    assert [r[0] for r in rows(sql, items)] == [1, 3]


def test_keys_differing_by_trailing_spaces_into_a_character_column_are_both_rejected(
    dest: PostgresDestination, sql: Any, pg_schema: str
) -> None:
    sql.execute(f"CREATE TABLE {pg_schema}.codes (k character(4) PRIMARY KEY, v text)")

    result = deliver(dest, f"{pg_schema}.codes", "upsert", k=["ab", "ab ", "cd"], v=["1", "2", "3"])

    assert sorted(result.rejected) == [0, 1]
    assert (
        "is the same record as 'ab ' under character(4) (trailing-space-insensitive)"
        in (result.rejected[0])
    )
    assert rows(sql, f"{pg_schema}.codes") == [("cd  ", "3")]
