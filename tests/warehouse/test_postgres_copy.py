"""PostgreSQL sources read through COPY (query) TO STDOUT: the same Arrow batches, value for value,
as psycopg's rows turned into Arrow by rows_to_arrow (the generic path), in bounded batches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from reverse_etl.errors import WarehouseError
from reverse_etl.warehouse import Warehouse, open_warehouse
from reverse_etl.warehouse.rows_to_arrow import BatchBuilder, describe
from reverse_etl.warehouse.sqlalchemy_generic import postgres_session

pytestmark = pytest.mark.postgres

HOSTILE = """
    (VALUES
      (1, NULL::text), (2, ''), (3, 'NULL'), (4, '\\N'), (5, E'tab\\tnew\\nline\\rcr'),
      (6, 'quote " comma , apostrophe '' backslash \\ end\\'), (7, 'unicode é ✓ 漢字 🚀'),
      (8, repeat('x', 100000)), (9, '"'), (10, ',')
    ) AS t(id, s)
"""

EVERY_TYPE = f"""
    SELECT id, s,
           id::int2 AS small, (id * 3000000000)::int8 AS big, id % 2 = 0 AS flag,
           CASE WHEN id = 1 THEN NULL ELSE id / 7.0 END::float8 AS f8,
           (id / 3.0)::float4 AS f4,
           CASE id WHEN 2 THEN 'NaN'::float8 WHEN 3 THEN '-Infinity' ELSE 0.1 + 0.2 END AS odd,
           (id * 1.25)::numeric(12, 2) AS money, id / 8::numeric AS ratio,
           (10 ^ 40)::numeric(60, 0) + id AS huge,
           DATE '2024-02-29' + id AS day, TIME '12:34:56.789' AS at_time,
           TIMESTAMP '2024-01-01 00:00:00.5' + id * INTERVAL '1 hour' AS naive,
           TIMESTAMPTZ '2024-03-31 01:30:00+02' + id * INTERVAL '1 minute' AS aware,
           CASE WHEN id > 1 THEN json_build_object('s', s, 'n', id, 'x', 1.50) END AS j,
           CASE WHEN id > 1 THEN ('{{"b": [1, 2.0], "a": "' || id || '"}}')::jsonb END AS jb,
           '{{"kept":  "as written"}}'::json AS raw_json,
           CASE id % 3 WHEN 0 THEN '{{"x": 1.50, "y": 1e3, "s": "2.50"}}'::jsonb
                       WHEN 1 THEN to_jsonb(s) ELSE '[1, -0, 12345678901234567890]' END AS jb2,
           decode(lpad(to_hex(id), 2, '0') || '00ff0a5c', 'hex') AS bytes,
           md5(id::text)::uuid AS uid, 'pad'::char(6) AS padded, 'x'::"char" AS one_char,
           'name'::name AS a_name, s::varchar(200000) AS v
    FROM {HOSTILE}
"""


@pytest.fixture
def warehouse(postgres_url: str, tmp_path: Path) -> Iterator[Warehouse]:
    with open_warehouse("analytics", postgres_url, tmp_path) as opened:
        yield opened


def generic(postgres_url: str, sql: str, batch_rows: int) -> pa.Table:
    """What the generic path builds: psycopg rows, read in the session the generic warehouse
    sets up, through rows_to_arrow."""
    with psycopg.connect(postgres_url) as conn:
        postgres_session(conn, None)
        cur = conn.cursor()
        cur.execute(sql)  # type: ignore[arg-type]
        assert cur.description is not None
        hints = describe("postgresql", cur.description)
        first = cur.fetchmany(batch_rows)
        builder = BatchBuilder("analytics", hints, first)
        batches = [builder.batch(first)]
        while rows := cur.fetchmany(batch_rows):
            batches.append(builder.batch(rows))
        return pa.Table.from_batches(batches, builder.schema)


def running_copies(postgres_url: str, state: str = "%") -> list[str]:
    """The COPY statements other sessions run (`state` 'active') or last ran."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE query LIKE 'COPY (%%' "
            "AND state LIKE %s AND pid <> pg_backend_pid()",
            (state,),
        ).fetchall()
    return [r[0] for r in rows]


def test_every_supported_type_reads_exactly_as_the_generic_path(
    warehouse: Warehouse, postgres_url: str
) -> None:
    reader = warehouse.stream(EVERY_TYPE, batch_rows=4)
    assert any("AS small" in q for q in running_copies(postgres_url))
    table = reader.read_all()

    expected = generic(postgres_url, EVERY_TYPE, batch_rows=4)
    assert table.schema == expected.schema
    assert repr(table.to_pylist()) == repr(expected.to_pylist())  # repr: NaN equals NaN
    assert table.column("s").to_pylist()[:4] == [None, "", "NULL", "\\N"]


def test_batches_are_bounded_and_every_row_arrives(warehouse: Warehouse) -> None:
    sql = "SELECT g AS id, 'row ' || g AS label FROM generate_series(1, 25000) AS g"
    sizes = [b.num_rows for b in warehouse.stream(sql, batch_rows=10_000)]

    assert sizes == [10_000, 10_000, 5_000]


def test_an_unconstrained_numeric_takes_its_scale_from_the_first_batch(
    warehouse: Warehouse, postgres_url: str
) -> None:
    sql = "SELECT v FROM (VALUES (1, 1.5), (2, NULL), (3, 2.25)) AS t(i, v) ORDER BY i"
    table = warehouse.stream(sql.replace("2.25", "2.5"), batch_rows=2).read_all()
    assert table.schema.field("v").type == pa.decimal128(38, 1)
    assert (
        table.column("v").to_pylist()
        == generic(postgres_url, sql.replace("2.25", "2.5"), 2)["v"].to_pylist()
    )
    # 2.255 needs a scale the first batch did not have: a clear error, as on the generic path
    with pytest.raises(WarehouseError, match=r"column 'v' .* does not fit decimal128\(38, 1\)"):
        warehouse.stream(sql.replace("(3, 2.25)", "(3, 2.255)"), batch_rows=2).read_all()


def test_a_type_copy_cannot_parse_keeps_the_generic_path(
    warehouse: Warehouse, postgres_url: str
) -> None:
    sql = "SELECT ARRAY[1, 2] AS tags, INTERVAL '-1 month 1 day' AS wait, TIMETZ '12:00+02' AS t"
    table = warehouse.stream(sql).read_all()

    assert table.to_pylist() == generic(postgres_url, sql, 10).to_pylist()
    # An interval keeps its months (a timedelta would make them 30 days), in ISO 8601.
    assert table.column("wait").to_pylist() == ["P-1M1D"]


def test_json_null_stays_json_and_sql_null_stays_null(warehouse: Warehouse) -> None:
    sql = "SELECT 'null'::jsonb AS j UNION ALL SELECT NULL::jsonb ORDER BY 1 NULLS LAST"

    assert warehouse.stream(sql).read_all().column("j").to_pylist() == ["null", None]


def test_an_error_while_copying_is_one_clean_message(warehouse: Warehouse) -> None:
    sql = "SELECT 1 / (g - 3) AS n FROM generate_series(1, 5) AS g"
    with pytest.raises(WarehouseError) as caught:
        warehouse.stream(sql).read_all()
    assert caught.value.message == "query on warehouse 'analytics' failed: division by zero"


def test_closing_the_warehouse_mid_stream_stops_the_copy(postgres_url: str, tmp_path: Path) -> None:
    marker = f"m_{uuid.uuid4().hex[:8]}"
    warehouse = open_warehouse("analytics", postgres_url, tmp_path)
    reader = warehouse.stream(f"SELECT g AS {marker} FROM generate_series(1, 100000000) AS g")
    assert reader.read_next_batch().num_rows > 0
    warehouse.close()

    for _ in range(50):  # the server notices the closed connection at its next write
        if not [q for q in running_copies(postgres_url, "active") if marker in q]:
            break
        time.sleep(0.1)
    assert not [q for q in running_copies(postgres_url, "active") if marker in q]
    with pytest.raises(WarehouseError, match="was closed before every row"):
        reader.read_all()


def test_a_slow_copy_is_cancelled_after_query_timeout(postgres_url: str, tmp_path: Path) -> None:
    with open_warehouse("analytics", postgres_url, tmp_path, query_timeout=1) as warehouse:
        started = time.monotonic()
        with pytest.raises(WarehouseError) as caught:
            warehouse.stream("SELECT 1 AS x FROM pg_sleep(120)").read_all()
        elapsed = time.monotonic() - started
        assert warehouse.stream("SELECT 2 AS still_usable").read_all().num_rows == 1
    assert caught.value.message == (
        "query on warehouse 'analytics' was cancelled after 1 s (query_timeout)"
    )
    assert elapsed < 60  # cancelled, not slept out: generous for a busy machine
