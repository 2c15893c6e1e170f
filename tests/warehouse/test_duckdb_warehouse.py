"""DuckDB warehouses: read-only files resolved from the project root, Arrow batches from DuckDB."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from reverse_etl.errors import WarehouseError
from reverse_etl.warehouse import Column, open_warehouse

URL = "duckdb:///warehouse.duckdb"
SLOW_SQL = "SELECT count(*) FROM range(100000000) AS a, range(100000) AS b"
ROWS = 250_000


@pytest.fixture(scope="session")
def duckdb_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root holding `warehouse.duckdb` (closed, so it can be opened read-only)."""
    root = tmp_path_factory.mktemp("project")
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(
            f"""
            CREATE TABLE customers AS
            SELECT
                range AS id,
                'user' || range || '@example.com' AS email,
                ((range % 1000) * 0.25)::DECIMAL(12, 2) AS balance,
                range % 2 = 0 AS active,
                DATE '2024-01-01' + (range % 365)::INTEGER AS signup_date,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(range) AS updated_at,
                (range * 0.5)::DOUBLE AS score,
                CASE WHEN range % 10 = 0 THEN NULL ELSE 'plan' || (range % 3) END AS plan
            FROM range({ROWS})
            """
        )
    return root


def test_relative_url_resolves_from_the_project_root(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        assert warehouse.dialect == "duckdb"
        assert (
            warehouse.stream("SELECT count(*) AS n FROM customers").read_all()["n"][0].as_py()
            == ROWS
        )


def test_absolute_url_ignores_the_project_root(duckdb_project: Path, tmp_path: Path) -> None:
    url = f"duckdb:///{duckdb_project / 'warehouse.duckdb'}"
    assert url.startswith("duckdb:////")
    with open_warehouse("demo", url, tmp_path) as warehouse:
        assert warehouse.columns("SELECT id FROM customers") == [Column("id", "BIGINT")]


def test_memory_url_opens_an_empty_database(tmp_path: Path) -> None:
    with open_warehouse("scratch", "duckdb:///:memory:", tmp_path) as warehouse:
        table = warehouse.stream("SELECT 42 AS answer").read_all()
    assert table.to_pylist() == [{"answer": 42}]
    assert list(tmp_path.iterdir()) == []


def test_columns_of_a_query_without_reading_rows(duckdb_project: Path) -> None:
    sql = "SELECT id, email, balance, active, signup_date, updated_at FROM customers;"
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        columns = warehouse.columns(sql)
    assert columns == [
        Column("id", "BIGINT"),
        Column("email", "VARCHAR"),
        Column("balance", "DECIMAL(12,2)"),
        Column("active", "BOOLEAN"),
        Column("signup_date", "DATE"),
        Column("updated_at", "TIMESTAMP WITH TIME ZONE"),
    ]


def test_columns_does_not_run_the_query(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project, query_timeout=1) as warehouse:
        started = time.monotonic()
        assert [c.name for c in warehouse.columns(SLOW_SQL)] == ["count_star()"]
    assert time.monotonic() - started < 10  # running SLOW_SQL would take far longer


def test_stream_reads_every_row_in_bounded_batches(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        reader = warehouse.stream("SELECT id FROM customers", batch_rows=30_000)
        sizes, total_ids = [], 0
        for batch in reader:
            sizes.append(batch.num_rows)
            total_ids += pc.sum(batch["id"]).as_py()
    assert sum(sizes) == ROWS
    assert max(sizes) <= 30_000
    assert len(sizes) >= ROWS // 30_000
    assert total_ids == ROWS * (ROWS - 1) // 2


def test_stream_keeps_column_types(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        reader = warehouse.stream("SELECT * FROM customers ORDER BY id")
        schema = reader.schema
        first = reader.read_next_batch().slice(0, 2).to_pylist()
        reader.close()
    assert schema.field("id").type == pa.int64()
    assert schema.field("email").type == pa.string()
    assert schema.field("balance").type == pa.decimal128(12, 2)
    assert schema.field("active").type == pa.bool_()
    assert schema.field("signup_date").type == pa.date32()
    assert schema.field("updated_at").type == pa.timestamp("us", tz="Etc/UTC")
    assert schema.field("score").type == pa.float64()
    assert first[0]["plan"] is None
    assert first[1]["email"] == "user1@example.com"
    assert str(first[1]["balance"]) == "0.25"


def test_empty_result_still_has_its_schema(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        table = warehouse.stream("SELECT id, email FROM customers WHERE false").read_all()
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.int64()), ("email", pa.string())])


def test_sql_error_is_one_clean_message_naming_the_warehouse(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project) as warehouse:
        for call in (warehouse.columns, warehouse.stream):
            with pytest.raises(WarehouseError) as caught:
                call("SELECT nope FROM customers")
            message = caught.value.message
            assert message.startswith("query on warehouse 'demo' failed: Binder Error:")
            assert '"nope"' in message
            assert "Traceback" not in message
            assert caught.value.hint


def test_missing_file_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError) as caught:
        open_warehouse("demo", "duckdb:///data/missing.duckdb", tmp_path)
    assert caught.value.message == (
        f"DuckDB file '{tmp_path / 'data' / 'missing.duckdb'}' of warehouse 'demo' does not exist"
    )
    assert "project root" in (caught.value.hint or "")
    assert not (tmp_path / "data").exists()


def test_file_opens_read_only(duckdb_project: Path) -> None:
    with (
        open_warehouse("demo", URL, duckdb_project) as warehouse,
        pytest.raises(WarehouseError, match="read-only"),
    ):
        warehouse.stream("CREATE TABLE scratch AS SELECT 1 AS a")


def test_several_readers_share_one_file(duckdb_project: Path) -> None:
    with (
        open_warehouse("demo", URL, duckdb_project) as first,
        open_warehouse("demo", URL, duckdb_project) as second,
    ):
        a = first.stream("SELECT id FROM customers", batch_rows=1000)
        b = second.stream("SELECT id FROM customers", batch_rows=1000)
        assert a.read_next_batch().num_rows == b.read_next_batch().num_rows == 1000
        a.close()
        b.close()


def test_file_held_by_a_writer_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        with pytest.raises(WarehouseError) as caught:
            open_warehouse("demo", "duckdb:///busy.duckdb", tmp_path)
    finally:
        writer.communicate("")
    assert caught.value.message.startswith(
        f"DuckDB file '{path}' of warehouse 'demo' is locked by another process"
    )
    assert f"PID {writer.pid}" in caught.value.message
    assert "one writing process" in (caught.value.hint or "")


def test_slow_query_is_cancelled_after_query_timeout(duckdb_project: Path) -> None:
    with open_warehouse("demo", URL, duckdb_project, query_timeout=1) as warehouse:
        started = time.monotonic()
        with pytest.raises(WarehouseError) as caught:
            warehouse.stream(SLOW_SQL).read_all()
        elapsed = time.monotonic() - started
        assert warehouse.stream("SELECT 1 AS still_usable").read_all().num_rows == 1
    assert caught.value.message == (
        "query on warehouse 'demo' was cancelled after 1 s (query_timeout)"
    )
    assert 0.9 < elapsed < 30  # after the timeout, long before SLOW_SQL would end


def test_query_timeout_counts_only_time_spent_in_duckdb(duckdb_project: Path) -> None:
    """A slow destination must not use up the warehouse's query_timeout."""
    # 3 s spent by the "destination" between batches, against a 1 s timeout that DuckDB's own
    # work (a fraction of a second for these rows, even on a busy machine) never reaches.
    with open_warehouse("demo", URL, duckdb_project, query_timeout=1) as warehouse:
        rows = 0
        for batch in warehouse.stream("SELECT id FROM customers", batch_rows=25_000):
            rows += batch.num_rows
            time.sleep(0.3)
    assert rows == ROWS


def test_reader_fails_cleanly_after_the_warehouse_is_closed(duckdb_project: Path) -> None:
    warehouse = open_warehouse("demo", URL, duckdb_project)
    reader = warehouse.stream("SELECT id FROM customers", batch_rows=1000)
    reader.read_next_batch()
    warehouse.close()
    with pytest.raises(WarehouseError, match="warehouse 'demo' was closed before every row"):
        reader.read_all()


def test_url_with_a_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match="invalid DuckDB URL"):
        open_warehouse("demo", "duckdb://server/warehouse.duckdb", tmp_path)
