"""Benchmark: `retl run` into MariaDB/MySQL (the `sql` connector) against the raw limit.

Builds an N-row, 10-column DuckDB source (the one of bench/pg_upsert.py), then measures in the
same run
  (a) the first load, and
  (b) the next snapshot with 5% of rows changed, 1% added and 1% removed (on_removed: delete),
for `retl run` (a subprocess, as a user runs it; peak RSS measured) and for the raw path: the
same rows exported by DuckDB as a tab-separated file, `LOAD DATA LOCAL INFILE` into a temporary
table, one INSERT ... ON DUPLICATE KEY UPDATE (and, for (b), one DELETE ... JOIN of the removed
keys).

    python bench/mysql_load.py --rows 1000000

Prints a table and writes bench/results/mysql_load.json. `measure(rows)` returns the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pymysql

sys.path.insert(0, str(Path(__file__).parent))
from pg_upsert import NAMES, build_source, next_snapshot, retl_run

COLUMNS = (
    "id BIGINT PRIMARY KEY, email VARCHAR(255), first_name VARCHAR(255), last_name VARCHAR(255), "
    "plan VARCHAR(255), score DOUBLE, amount DECIMAL(12,2), active BOOLEAN, created_at DATETIME, "
    "updated_at DATETIME"
)
DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _connect(url: str) -> pymysql.connections.Connection[Any]:
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        local_infile=True,
        autocommit=False,
    )


def write_project(root: Path, source: Path, url: str, table: str, batch_size: int | None) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "retl.yml").write_text(
        f"version: 1\nwarehouses:\n  bench:\n    url: duckdb:///{source}\n"
        f"destinations:\n  maria:\n    type: sql\n    url: ${{BENCH_MYSQL_URL}}\n"
    )
    mapping = "\n".join(f"  {c.strip()}: {c.strip()}" for c in NAMES.split(","))
    (root / "syncs" / "bench.yml").write_text(
        "warehouse: bench\nsource:\n  sql: select * from bench.customers\n"
        f"destination:\n  name: maria\n  object: {table}\nmode: upsert\nprimary_key: id\n"
        f"mapping:\n{mapping}\non_removed: delete\nallow_destructive: true\n"
        + (f"batch_size: {batch_size}\n" if batch_size else "")
    )
    os.environ["BENCH_MYSQL_URL"] = url


def raw_load(source: Path, url: str, table: str, work: Path, delete_missing: bool) -> float:
    """The machine's limit: DuckDB export, LOAD DATA into a temp table, one merge statement."""
    start = time.perf_counter()
    path = work / "raw.tsv"
    con = duckdb.connect(str(source), read_only=True)
    select = NAMES.replace("active", "active::int AS active")
    con.execute(
        f"COPY (SELECT {select} FROM bench.customers) TO '{path}' "
        "(HEADER false, DELIMITER '\t', QUOTE '', ESCAPE '', NULLSTR '\\N')"
    )
    con.close()
    updates = ", ".join(f"{c.strip()} = VALUES({c.strip()})" for c in NAMES.split(",")[1:])
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TEMPORARY TABLE raw_tmp ({COLUMNS})")
            cur.execute(
                f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE raw_tmp CHARACTER SET utf8mb4 "
                f"FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' ({NAMES})"
            )
            cur.execute(
                f"INSERT INTO {table} ({NAMES}) SELECT {NAMES} FROM raw_tmp "
                f"ON DUPLICATE KEY UPDATE {updates}"
            )
            if delete_missing:
                cur.execute(
                    f"DELETE r FROM {table} r LEFT JOIN raw_tmp t ON t.id = r.id WHERE t.id IS NULL"
                )
        conn.commit()
    finally:
        conn.close()
    path.unlink()
    return time.perf_counter() - start


def check_equal(url: str, retl_table: str, raw_table: str) -> bool:
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            counts = []
            for a, b in ((retl_table, raw_table), (raw_table, retl_table)):
                cur.execute(
                    f"SELECT count(*) FROM (SELECT {NAMES} FROM {a} EXCEPT "
                    f"SELECT {NAMES} FROM {b}) d"
                )
                counts.append(cur.fetchone()[0])  # type: ignore[index]
    finally:
        conn.close()
    return counts == [0, 0]


def measure(rows: int, url: str = DEFAULT_URL, batch_size: int | None = None) -> dict[str, Any]:
    """First load and next snapshot into MariaDB: retl and the raw path in the same run."""
    tag = uuid.uuid4().hex[:8]
    retl_table, raw_table = f"bench_mysql_retl_{tag}", f"bench_mysql_raw_{tag}"
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            for table in (retl_table, raw_table):
                cur.execute(f"CREATE TABLE {table} ({COLUMNS})")
        conn.commit()
        with tempfile.TemporaryDirectory(prefix="retl-bench-") as tmp:
            work = Path(tmp)
            source = work / "source.duckdb"
            build_source(source, rows)
            write_project(work / "project", source, url, retl_table, batch_size)
            results: dict[str, Any] = {"rows": rows, "batch_size": batch_size}
            raw_a = raw_load(source, url, raw_table, work, delete_missing=False)
            retl_a, rss_a = retl_run(work / "project")
            results["a_first_load"] = {
                "raw_s": raw_a, "retl_s": retl_a, "ratio": retl_a / raw_a, "peak_rss_mib": rss_a
            }  # fmt: skip
            next_snapshot(source, rows)
            raw_b = raw_load(source, url, raw_table, work, delete_missing=True)
            retl_b, rss_b = retl_run(work / "project")
            results["b_next_snapshot"] = {
                "raw_s": raw_b, "retl_s": retl_b, "ratio": retl_b / raw_b, "peak_rss_mib": rss_b
            }  # fmt: skip
            results["equal"] = check_equal(url, retl_table, raw_table)
    finally:
        with conn.cursor() as cur:
            for table in (retl_table, raw_table):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.commit()
        conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the connector's")
    parser.add_argument("--url", default=os.environ.get("RETL_TEST_MYSQL_URL", DEFAULT_URL))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "mysql_load.json"
    )
    args = parser.parse_args()
    results = measure(args.rows, args.url, args.batch_size)
    print(
        f"rows: {args.rows:,}  batch_size: {args.batch_size or 'connector default'}  "
        f"equal to raw: {results['equal']}"
    )
    print(f"{'case':<22}{'raw s':>10}{'retl s':>10}{'retl/raw':>10}{'peak RSS MiB':>14}")
    for case in ("a_first_load", "b_next_snapshot"):
        r = results[case]
        print(
            f"{case:<22}{r['raw_s']:>10.2f}{r['retl_s']:>10.2f}{r['ratio']:>10.2f}"
            f"{r['peak_rss_mib']:>14.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if not results["equal"]:
        sys.exit("the retl table differs from the raw table")


if __name__ == "__main__":
    main()
