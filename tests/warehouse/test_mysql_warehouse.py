"""MySQL/MariaDB warehouses through SQLAlchemy + PyMySQL: unbuffered cursors, faithful types."""

from __future__ import annotations

import datetime as dt
import gc
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from reverse_etl.errors import WarehouseError
from reverse_etl.warehouse import Column, Warehouse, open_warehouse

pytestmark = pytest.mark.mysql

ROWS = 250_000


@pytest.fixture(scope="module")
def customers(mysql_url: str) -> Iterator[str]:
    """A fresh `customers` table with 250,000 rows; yields its name."""
    table = f"customers_{uuid.uuid4().hex[:10]}"
    digits = f"digits_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {digits} (d INT)")
        conn.exec_driver_sql(f"INSERT INTO {digits} VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)")
        conn.exec_driver_sql(
            f"""
            CREATE TABLE {table} AS
            SELECT
                n AS id,
                CONCAT('user', n, '@example.com') AS email,
                CAST(MOD(n, 1000) * 0.25 AS DECIMAL(12, 2)) AS balance,
                CAST(DATE '2024-01-01' + INTERVAL MOD(n, 365) DAY AS DATE) AS signup_date,
                TIMESTAMP '2024-01-01 00:00:00' + INTERVAL n SECOND AS updated_at,
                CAST(n * 0.5 AS DOUBLE) AS score,
                CASE WHEN MOD(n, 10) = 0 THEN NULL ELSE CONCAT('plan', MOD(n, 3)) END AS plan
            FROM (
                SELECT a.d + 10 * b.d + 100 * c.d + 1000 * d.d + 10000 * e.d + 100000 * f.d + 1
                    AS n
                FROM {digits} a, {digits} b, {digits} c, {digits} d, {digits} e, {digits} f
            ) AS numbers
            WHERE n <= {ROWS}
            """
        )
        conn.exec_driver_sql(f"DROP TABLE {digits}")
    yield table
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()


@pytest.fixture
def warehouse(mysql_url: str, tmp_path: Path) -> Iterator[Warehouse]:
    with open_warehouse("shop", mysql_url, tmp_path) as opened:
        yield opened


def test_columns_of_a_query_without_reading_rows(warehouse: Warehouse, customers: str) -> None:
    columns = warehouse.columns(f"SELECT id, email, balance, updated_at FROM {customers}")
    assert [column.name for column in columns] == ["id", "email", "balance", "updated_at"]
    assert columns[2] == Column("balance", "decimal")


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
    assert schema.field("id").type == pa.int64()
    assert schema.field("email").type == pa.string()
    assert pa.types.is_decimal(schema.field("balance").type)
    assert schema.field("balance").type.scale == 2
    assert schema.field("signup_date").type == pa.date32()
    assert schema.field("updated_at").type == pa.timestamp("us")
    assert schema.field("score").type == pa.float64()
    assert rows[0] == {
        "id": 1,
        "email": "user1@example.com",
        "balance": Decimal("0.25"),
        "signup_date": dt.date(2024, 1, 2),
        "updated_at": dt.datetime(2024, 1, 1, 0, 0, 1),
        "score": 0.5,
        "plan": "plan1",
    }
    assert rows[9]["plan"] is None


def test_empty_result_still_has_its_schema(warehouse: Warehouse, customers: str) -> None:
    table = warehouse.stream(f"SELECT id, updated_at FROM {customers} WHERE 1 = 0").read_all()
    assert table.num_rows == 0
    assert table.schema.names == ["id", "updated_at"]
    assert table.schema.field("id").type == pa.int64()


def test_sql_runs_as_written_without_parameter_markers(warehouse: Warehouse) -> None:
    sql = "SELECT 'a%' AS pattern, ':name' AS colon FROM DUAL WHERE 'abc' LIKE 'a%'"
    assert warehouse.stream(sql).read_all().to_pylist() == [{"pattern": "a%", "colon": ":name"}]


def test_sql_error_is_one_clean_message_naming_the_warehouse(warehouse: Warehouse) -> None:
    for call in (warehouse.columns, warehouse.stream):
        with pytest.raises(WarehouseError) as caught:
            call("SELECT nope FROM DUAL")
        assert caught.value.message.startswith(
            "query on warehouse 'shop' failed: ERROR 1054: Unknown column 'nope'"
        )


def test_slow_query_is_cancelled_after_query_timeout(mysql_url: str, tmp_path: Path) -> None:
    with open_warehouse("shop", mysql_url, tmp_path, query_timeout=1) as warehouse:
        if warehouse.dialect != "mariadb" and not _is_mariadb(mysql_url):
            pytest.skip("MySQL's max_execution_time does not interrupt SLEEP()")
        started = time.monotonic()
        with pytest.raises(WarehouseError) as caught:
            warehouse.stream("SELECT SLEEP(120) AS slept").read_all()
        elapsed = time.monotonic() - started
        assert warehouse.stream("SELECT 1 AS still_usable").read_all().num_rows == 1
    assert (
        caught.value.message == "query on warehouse 'shop' was cancelled after 1 s (query_timeout)"
    )
    assert elapsed < 60  # killed, not slept out: generous for a busy machine


def test_failed_connection_masks_the_password(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    with pytest.raises(WarehouseError) as caught:
        open_warehouse("shop", f"mysql://root:{secret}@127.0.0.1:1/test", tmp_path)
    assert "root:***@127.0.0.1:1/test" in caught.value.message
    assert secret not in str(caught.value) and secret not in (caught.value.hint or "")


def _is_mariadb(url: str) -> bool:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = str(conn.exec_driver_sql("SELECT VERSION()").scalar())
    engine.dispose()
    return "mariadb" in version.lower()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_closing_a_reader_early_stops_the_query(warehouse: Warehouse, customers: str) -> None:
    """MySQL would send all 62.5 billion rows of an unread result; the query is killed instead."""
    started = time.monotonic()
    reader = warehouse.stream(f"SELECT a.id FROM {customers} a, {customers} b", batch_rows=1000)
    assert reader.read_next_batch().num_rows == 1000
    reader.close()
    del reader
    gc.collect()
    assert time.monotonic() - started < 30  # the whole result would take hours
    assert warehouse.stream("SELECT 1 AS still_usable").read_all().num_rows == 1
