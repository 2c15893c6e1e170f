"""Benchmark: `retl run` into PostgreSQL against the raw limit of this machine.

Builds an N-row, 10-column DuckDB source, then measures in the same run
  (a) the first load, and
  (b) the next snapshot with 5% of rows changed, 1% added and 1% removed (on_removed: delete),
for `retl run` (a subprocess, as a user runs it; peak RSS measured) and for the raw path: the
same rows exported by DuckDB and COPY'd by psycopg into a temp table, then one
INSERT ... ON CONFLICT DO UPDATE (and, for (b), one DELETE of the removed keys).

    python bench/pg_upsert.py --rows 1000000

Prints a table and writes bench/results/pg_upsert.json. `measure(rows)` returns the figures
(the first load COPYs straight into the empty table; the raw first load is COPY + merge).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import psycopg

COLUMNS = (
    "id BIGINT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT, plan TEXT, "
    "score DOUBLE PRECISION, amount NUMERIC(12,2), active BOOLEAN, created_at TIMESTAMP, "
    "updated_at TIMESTAMP"
)
NAMES = "id, email, first_name, last_name, plan, score, amount, active, created_at, updated_at"


def build_source(path: Path, rows: int) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA IF NOT EXISTS bench")
    con.execute(
        f"""CREATE OR REPLACE TABLE bench.customers AS
        SELECT range AS id, 'user' || range || '@example.com' AS email,
               'First' || (range % 1000) AS first_name, 'Last' || (range % 7919) AS last_name,
               ['free', 'pro', 'team', 'enterprise'][1 + range % 4] AS plan,
               (range % 1000) / 10.0 AS score, CAST((range % 100000) / 100.0 AS DECIMAL(12,2)) AS amount,
               range % 3 = 0 AS active,
               TIMESTAMP '2024-01-01' + INTERVAL (range % 100000) SECOND AS created_at,
               TIMESTAMP '2025-01-01' + INTERVAL (range % 50000) SECOND AS updated_at
        FROM range({rows})"""
    )
    con.close()


def next_snapshot(path: Path, rows: int) -> None:
    """5% changed, 1% removed, 1% added."""
    con = duckdb.connect(str(path))
    con.execute("UPDATE bench.customers SET plan = 'changed', score = score + 1 WHERE id % 20 = 0")
    con.execute("DELETE FROM bench.customers WHERE id % 100 = 1")
    con.execute(
        f"""INSERT INTO bench.customers
        SELECT {rows} + range, 'new' || range || '@example.com', 'New', 'Person', 'free', 0, 0,
               true, TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01'
        FROM range({rows // 100})"""
    )
    con.close()


def write_project(
    root: Path, source: Path, pg_url: str, batch_size: int | None, table: str
) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "retl.yml").write_text(
        f"version: 1\nwarehouses:\n  bench:\n    url: duckdb:///{source}\n"
        f"destinations:\n  pg:\n    type: postgres\n    url: ${{BENCH_PG_URL}}\n"
    )
    mapping = "\n".join(f"  {c.strip()}: {c.strip()}" for c in NAMES.split(","))
    (root / "syncs" / "bench.yml").write_text(
        "warehouse: bench\nsource:\n  sql: select * from bench.customers\n"
        f"destination:\n  name: pg\n  object: public.{table}\nmode: upsert\nprimary_key: id\n"
        f"mapping:\n{mapping}\non_removed: delete\nallow_destructive: true\n"
        + (f"batch_size: {batch_size}\n" if batch_size else "")
    )
    os.environ["BENCH_PG_URL"] = pg_url


def retl_run(root: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `retl run`, as a separate process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "run", "bench", "--yes", "--project-dir", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"retl run failed:\n{result.stdout}\n{result.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def raw_load(source: Path, pg_url: str, work: Path, delete_missing: bool, table: str) -> float:
    """The machine's limit: DuckDB export, COPY into a temp table, one merge statement."""
    start = time.perf_counter()
    csv_path = work / "raw.csv"
    con = duckdb.connect(str(source), read_only=True)
    con.execute(f"COPY (SELECT {NAMES} FROM bench.customers) TO '{csv_path}' (HEADER false)")
    con.close()
    updates = ", ".join(f"{c.strip()} = EXCLUDED.{c.strip()}" for c in NAMES.split(",")[1:])
    with psycopg.connect(pg_url) as conn:
        conn.execute(f"CREATE TEMP TABLE raw_tmp ({COLUMNS.replace(' PRIMARY KEY', '')})")
        with (
            conn.cursor().copy(f"COPY raw_tmp ({NAMES}) FROM STDIN (FORMAT csv)") as copy,
            open(csv_path, "rb") as f,
        ):
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        conn.execute(
            f"INSERT INTO {table} ({NAMES}) SELECT {NAMES} FROM raw_tmp "
            f"ON CONFLICT (id) DO UPDATE SET {updates}"
        )
        if delete_missing:
            conn.execute(
                f"DELETE FROM {table} r WHERE NOT EXISTS (SELECT 1 FROM raw_tmp t WHERE t.id = r.id)"
            )
        conn.commit()
    csv_path.unlink()
    return time.perf_counter() - start


def check_equal(pg_url: str, retl: str, raw: str) -> bool:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {NAMES} FROM {retl} EXCEPT SELECT {NAMES} FROM {raw}) a), "
            f"(SELECT count(*) FROM (SELECT {NAMES} FROM {raw} EXCEPT SELECT {NAMES} FROM {retl}) b)"
        ).fetchone()
    return row == (0, 0)


def measure(
    rows: int,
    pg_url: str = "postgresql://postgres@127.0.0.1:5432/test",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """First load and next snapshot into PostgreSQL: retl and the raw path in the same run."""
    tag = uuid.uuid4().hex[:8]
    retl, raw = f"bench_pg_upsert_retl_{tag}", f"bench_pg_upsert_raw_{tag}"
    results: dict[str, Any] = {"rows": rows, "batch_size": batch_size}
    try:
        with tempfile.TemporaryDirectory(prefix="retl-bench-") as tmp:
            work = Path(tmp)
            source = work / "source.duckdb"
            build_source(source, rows)
            write_project(work / "project", source, pg_url, batch_size, retl)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                for table in (retl, raw):
                    conn.execute(f"CREATE TABLE {table} ({COLUMNS})")
                conn.execute("CHECKPOINT")
            raw_a = raw_load(source, pg_url, work, delete_missing=False, table=raw)
            retl_a, rss_a = retl_run(work / "project")
            results["a_first_load"] = {
                "raw_s": raw_a, "retl_s": retl_a, "ratio": retl_a / raw_a, "peak_rss_mib": rss_a
            }  # fmt: skip
            next_snapshot(source, rows)
            raw_b = raw_load(source, pg_url, work, delete_missing=True, table=raw)
            retl_b, rss_b = retl_run(work / "project")
            results["b_next_snapshot"] = {
                "raw_s": raw_b, "retl_s": retl_b, "ratio": retl_b / raw_b, "peak_rss_mib": rss_b
            }  # fmt: skip
            results["equal"] = check_equal(pg_url, retl, raw)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for table in (retl, raw):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the connector's own (50,000)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "pg_upsert.json"
    )
    args = parser.parse_args()

    results = measure(args.rows, args.pg_url, args.batch_size)
    equal = results.pop("equal")
    results.pop("rows"), results.pop("batch_size")
    print(
        f"rows: {args.rows:,}  batch_size: {args.batch_size or 'connector default'}  equal to raw: {equal}"
    )
    print(f"{'case':<22}{'raw s':>10}{'retl s':>10}{'retl/raw':>10}{'peak RSS MiB':>14}")
    for case, r in results.items():
        print(
            f"{case:<22}{r['raw_s']:>10.2f}{r['retl_s']:>10.2f}{r['ratio']:>10.2f}{r['peak_rss_mib']:>14.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"rows": args.rows, "batch_size": args.batch_size, "equal": equal, **results}, indent=2
        )
    )
    if not equal:
        sys.exit("the retl table differs from the raw table")


if __name__ == "__main__":
    main()
