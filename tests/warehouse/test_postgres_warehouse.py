"""PostgreSQL warehouses through SQLAlchemy + psycopg 3: server-side cursors, faithful types."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from reverse_etl.errors import WarehouseError
from reverse_etl.warehouse import Column, Warehouse, open_warehouse

pytestmark = pytest.mark.postgres

ROWS = 250_000


@pytest.fixture(scope="module")
def customers(postgres_url: str) -> Iterator[str]:
    """A fresh schema's `customers` with 250,000 rows; yields the qualified table name."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    table = f'"{schema}".customers'
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(
            f"""
            CREATE TABLE {table} AS
            SELECT
                g AS id,
                'user' || g || '@example.com' AS email,
                ((g % 1000) * 0.25)::numeric(12, 2) AS balance,
                g % 2 = 0 AS active,
                DATE '2024-01-01' + g % 365 AS signup_date,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL '1 second' AS updated_at,
                (g * 0.5)::float8 AS score,
                jsonb_build_object('tier', g % 3) AS traits,
                CASE WHEN g % 10 = 0 THEN NULL ELSE 'plan' || g % 3 END AS plan
            FROM generate_series(1, {ROWS}) AS g
            """
        )
    yield table
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def warehouse(postgres_url: str, tmp_path: Path) -> Iterator[Warehouse]:
    with open_warehouse("analytics", postgres_url, tmp_path) as opened:
        yield opened


def test_postgresql_urls_use_psycopg_3(warehouse: Warehouse) -> None:
    assert warehouse.dialect == "postgresql"
    assert warehouse.stream("SELECT 1 AS one").read_all().to_pylist() == [{"one": 1}]


def test_columns_of_a_query_without_reading_rows(warehouse: Warehouse, customers: str) -> None:
    columns = warehouse.columns(f"SELECT id, email, balance, updated_at, traits FROM {customers};")
    assert columns == [
        Column("id", "int4"),
        Column("email", "text"),
        Column("balance", "numeric(12,2)"),
        Column("updated_at", "timestamptz"),
        Column("traits", "jsonb"),
    ]


def test_stream_reads_every_row_in_bounded_batches(warehouse: Warehouse, customers: str) -> None:
    sizes, total_ids = [], 0
    for batch in warehouse.stream(f"SELECT id FROM {customers}", batch_rows=40_000):
        sizes.append(batch.num_rows)
        total_ids += pc.sum(batch["id"]).as_py()
    assert sum(sizes) == ROWS
    assert max(sizes) == 40_000
    assert total_ids == ROWS * (ROWS + 1) // 2


def test_stream_keeps_column_types(warehouse: Warehouse, customers: str) -> None:
    reader = warehouse.stream(f"SELECT * FROM {customers} ORDER BY id", batch_rows=10)
    schema = reader.schema
    rows = reader.read_next_batch().to_pylist()
    reader.close()
    assert schema == pa.schema(
        [
            ("id", pa.int32()),
            ("email", pa.string()),
            ("balance", pa.decimal128(12, 2)),
            ("active", pa.bool_()),
            ("signup_date", pa.date32()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
            ("score", pa.float64()),
            ("traits", pa.json_()),  # JSON text, typed so the engine knows it for JSON
            ("plan", pa.string()),
        ]
    )
    assert rows[0] == {
        "id": 1,
        "email": "user1@example.com",
        "balance": Decimal("0.25"),
        "active": False,
        "signup_date": dt.date(2024, 1, 2),
        "updated_at": dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=dt.UTC),
        "score": 0.5,
        "traits": '{"tier": 1}',
        "plan": "plan1",
    }
    assert rows[9]["plan"] is None


def test_unconstrained_numeric_keeps_its_scale(warehouse: Warehouse) -> None:
    table = warehouse.stream("SELECT 1::numeric / 8 AS ratio, 10::numeric AS whole").read_all()
    assert table.to_pylist() == [{"ratio": Decimal("0.12500000000000000000"), "whole": 10}]
    assert pa.types.is_decimal(table.schema.field("ratio").type)


def test_sql_runs_as_written_without_parameter_markers(warehouse: Warehouse) -> None:
    sql = "SELECT 'a%' AS pattern, ':name' AS colon WHERE 'abc' LIKE 'a%'"
    assert warehouse.stream(sql).read_all().to_pylist() == [{"pattern": "a%", "colon": ":name"}]


def test_empty_result_still_has_its_schema(warehouse: Warehouse, customers: str) -> None:
    table = warehouse.stream(f"SELECT id, email, balance FROM {customers} WHERE false").read_all()
    assert table.num_rows == 0
    assert table.schema == pa.schema(
        [("id", pa.int32()), ("email", pa.string()), ("balance", pa.decimal128(12, 2))]
    )


def test_stream_reads_lazily_from_a_server_side_cursor(postgres_url: str, tmp_path: Path) -> None:
    """A hundred million rows: only a server-side cursor returns the first batch at once."""
    sql = (
        "SELECT a * 10000 + b AS n "
        "FROM generate_series(1, 10000) AS a, generate_series(1, 10000) AS b"
    )
    with open_warehouse("analytics", postgres_url, tmp_path, query_timeout=5) as warehouse:
        started = time.monotonic()
        reader = warehouse.stream(sql, batch_rows=1000)
        assert reader.read_next_batch().num_rows == 1000
        reader.close()
    assert time.monotonic() - started < 15  # generous: reading every row takes far longer


def test_sql_error_is_one_clean_message_naming_the_warehouse(warehouse: Warehouse) -> None:
    for call in (warehouse.columns, warehouse.stream):
        with pytest.raises(WarehouseError) as caught:
            call("SELECT nope\nFROM (SELECT 1 AS id) AS t")
        assert caught.value.message == (
            "query on warehouse 'analytics' failed: column \"nope\" does not exist\n"
            "LINE 1: SELECT nope\n"
            "               ^"
        )
        assert caught.value.hint


def test_slow_query_is_cancelled_after_query_timeout(postgres_url: str, tmp_path: Path) -> None:
    with open_warehouse("analytics", postgres_url, tmp_path, query_timeout=1) as warehouse:
        started = time.monotonic()
        with pytest.raises(WarehouseError) as caught:
            warehouse.stream("SELECT pg_sleep(120)").read_all()
        elapsed = time.monotonic() - started
        assert warehouse.stream("SELECT 1 AS still_usable").read_all().num_rows == 1
    assert caught.value.message == (
        "query on warehouse 'analytics' was cancelled after 1 s (query_timeout)"
    )
    assert elapsed < 60  # cancelled, not slept out: generous for a busy machine


def test_failed_connection_masks_the_password(postgres_url: str, tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    base = postgres_url.split("://", 1)[1].split("@", 1)[1].rsplit("/", 1)[0]
    user = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
    for url in (
        f"postgresql://{user}:{secret}@{base}/retl_no_such_database",
        f"postgresql://{user}:{secret}@127.0.0.1:1/test",
    ):
        with pytest.raises(WarehouseError) as caught:
            open_warehouse("analytics", url, tmp_path)
        error = caught.value
        assert error.message.startswith("could not connect to warehouse 'analytics' at ")
        assert f"{user}:***@" in error.message
        for text in (error.message, error.hint or "", str(error)):
            assert secret not in text
        assert error.__cause__ is None and error.__suppress_context__


def test_reader_fails_cleanly_after_the_warehouse_is_closed(
    postgres_url: str, tmp_path: Path
) -> None:
    warehouse = open_warehouse("analytics", postgres_url, tmp_path)
    reader = warehouse.stream("SELECT g FROM generate_series(1, 10000) AS g", batch_rows=1000)
    reader.read_next_batch()
    warehouse.close()
    with pytest.raises(WarehouseError, match="warehouse 'analytics' was closed before every row"):
        reader.read_all()
