"""Benchmark: reading a PostgreSQL source into Arrow, retl next to the raw limit.

Creates an N-row, 10-column table (ints, text, double, numeric, boolean, timestamps, a date and
jsonb) in a fresh schema, then in the same run reads `SELECT * FROM it` as Arrow with
  retl      the warehouse layer (`open_warehouse(...).stream`, COPY parsed by pyarrow in batches),
  generic   psycopg rows through rows_to_arrow (the path every other SQLAlchemy source takes),
  raw csv   the limit: COPY (query) TO STDOUT (FORMAT csv), the whole text parsed by pyarrow.csv,
  raw binary  COPY ... (FORMAT binary) through psycopg's typed row reader, then pa.array.

    python bench/pg_read.py --rows 1000000

Prints a table and writes bench/results/pg_read.json. `measure(rows)` returns the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv

from reverse_etl.warehouse import open_warehouse
from reverse_etl.warehouse.rows_to_arrow import BatchBuilder, describe

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def build_source(conn: psycopg.Connection[Any], table: str, rows: int) -> None:
    conn.execute(
        f"""CREATE TABLE {table} AS
        SELECT g::bigint AS id, 'user' || g || '@example.com' AS email,
               'First' || (g % 1000) AS first_name, ('{{"tier": ' || g % 4 || '}}')::jsonb AS traits,
               (g % 1000) / 10.0::float8 AS score, ((g % 100000) / 100.0)::numeric(12, 2) AS amount,
               g % 3 = 0 AS active, DATE '2024-01-01' + g % 365 AS signup,
               TIMESTAMP '2024-01-01' + (g % 100000) * INTERVAL '1 second' AS created_at,
               TIMESTAMPTZ '2025-01-01 00:00:00+00' + (g % 50000) * INTERVAL '1 second' AS updated_at
        FROM generate_series(1, {rows}) AS g"""
    )
    conn.execute(f"ANALYZE {table}")


def read_retl(url: str, sql: str) -> tuple[float, int]:
    start = time.perf_counter()
    with open_warehouse("bench", url, Path(tempfile.gettempdir())) as warehouse:
        n = sum(batch.num_rows for batch in warehouse.stream(sql))
    return time.perf_counter() - start, n


def read_generic(url: str, sql: str, batch_rows: int = 100_000) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    with psycopg.connect(url) as conn, conn.cursor(name="bench") as cur:
        cur.execute(sql.encode())
        first = cur.fetchmany(batch_rows)
        assert cur.description is not None
        builder = BatchBuilder("bench", describe("postgresql", cur.description), first)
        rows = first
        while rows:
            n += builder.batch(rows).num_rows
            rows = cur.fetchmany(batch_rows)
    return time.perf_counter() - start, n


def read_raw_csv(url: str, sql: str, types: dict[str, pa.DataType]) -> tuple[float, int]:
    start = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)".encode()) as copy:
            data = b"".join(copy)
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=list(types)),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=types, true_values=["t"], false_values=["f"]
            ),
        )
    return time.perf_counter() - start, table.num_rows


def read_raw_binary(
    url: str, sql: str, schema: pa.Schema, pg_types: list[str]
) -> tuple[float, int]:
    start = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT binary)".encode()) as copy:
            copy.set_types(pg_types)
            rows = list(copy.rows())
        columns = list(zip(*rows, strict=True))
        arrays = [
            pa.array([None if v is None else json.dumps(v) for v in c], pa.string())
            if pa.types.is_string(f.type) and t == "jsonb"
            else pa.array(c, f.type)
            for c, f, t in zip(columns, schema, pg_types, strict=True)
        ]
        table = pa.table(arrays, schema=schema)
    return time.perf_counter() - start, table.num_rows


def measure(rows: int, url: str = DEFAULT_URL) -> dict[str, Any]:
    """Seconds to read the source into Arrow: retl, the generic path, and the raw limits."""
    schema_name = f"bench_read_{uuid.uuid4().hex[:8]}"
    table = f"{schema_name}.customers"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema_name}")
        try:
            build_source(conn, table, rows)
            sql = f"SELECT * FROM {table}"
            with open_warehouse("bench", url, Path(tempfile.gettempdir())) as warehouse:
                arrow_schema = warehouse.stream(sql, batch_rows=1).schema
            pg_types = [
                r[0]
                for r in conn.execute(
                    "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                    "%s::regclass AND attnum > 0 ORDER BY attnum",
                    (table,),
                )
            ]
            csv_types = {
                f.name: pa.string() if t == "jsonb" else f.type
                for f, t in zip(arrow_schema, pg_types, strict=True)
            }
            figures: dict[str, Any] = {"rows": rows}
            read_raw_csv(url, sql, csv_types)  # warm-up: every path then reads a cached table
            for name, read in (
                ("raw_csv", lambda: read_raw_csv(url, sql, csv_types)),
                ("retl", lambda: read_retl(url, sql)),
                ("generic", lambda: read_generic(url, sql)),
                ("raw_binary", lambda: read_raw_binary(url, sql, arrow_schema, pg_types)),
            ):
                seconds, n = read()
                assert n == rows, (name, n)
                figures[f"{name}_s"] = seconds
            figures["retl_ratio"] = figures["retl_s"] / figures["raw_csv_s"]
            figures["generic_ratio"] = figures["generic_s"] / figures["raw_csv_s"]
            figures["raw_binary_ratio"] = figures["raw_binary_s"] / figures["raw_csv_s"]
        finally:
            conn.execute(f"DROP SCHEMA {schema_name} CASCADE")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", default=os.environ.get("RETL_TEST_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "pg_read.json"
    )
    args = parser.parse_args()
    figures = measure(args.rows, args.url)
    print(f"rows: {args.rows:,}")
    print(f"{'path':<34}{'seconds':>10}{'rows/s':>12}{'vs raw csv':>12}")
    for name, label in (
        ("raw_csv", "raw COPY csv -> pyarrow.csv"),
        ("retl", "retl (COPY, batches)"),
        ("generic", "generic (psycopg rows -> Arrow)"),
        ("raw_binary", "raw COPY binary -> psycopg rows"),
    ):
        seconds = figures[f"{name}_s"]
        print(
            f"{label:<34}{seconds:>10.2f}{args.rows / seconds:>12,.0f}"
            f"{seconds / figures['raw_csv_s']:>12.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
