"""Benchmark: `state.backend: warehouse` on PostgreSQL, N rows with 0.1% changed.

Generates N rows in PostgreSQL with generate_series, a destination table equal to it and the
warehouse state of a sync that delivered it all (seeded in SQL with retl's own key and hash
expressions), then changes 0.1% of the rows and measures, in the same run:

- the limit: a hand-written SQL diff of the same data in PostgreSQL (md5 of the same
  encoding joined with the state, counting the changed rows), nothing leaving the server;
- `retl plan --json` (seconds, rows fetched from the warehouse, peak RSS);
- `retl run` (seconds, peak RSS), then checks that the destination equals the source.

    python bench/warehouse_state.py --rows 10000000

Prints a table and writes bench/results/warehouse_state.json. Needs PostgreSQL at
$RETL_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
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
from pathlib import Path

import psycopg

URL = os.environ.get("RETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SRC, DST, STATE = "bench_whs_src", "bench_whs_dst", "bench_whs_state"
RETL = [sys.executable, "-m", "reverse_etl"]

RETL_YML = f"""version: 1
warehouses:
  pg:
    url: {URL}
destinations:
  dst:
    type: postgres
    url: {URL}
state:
  backend: warehouse
  warehouse: pg
  schema: {STATE}
"""
SYNC = f"""warehouse: pg
source:
  sql: select id, email, name, plan, score, updated_at from {SRC}.customers
destination:
  name: dst
  object: {DST}.customers
mode: upsert
primary_key: id
batch_size: 5000
mapping:
  id: id
  email: email
  name: name
  plan: plan
  score: score
  updated_at: updated_at
"""


def generate(conn: psycopg.Connection, rows: int) -> None:
    for schema in (SRC, DST, STATE):
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(
        f"CREATE TABLE {SRC}.customers AS SELECT g AS id, 'user' || g || '@example.com' AS email, "
        "'Name ' || g AS name, (ARRAY['free','pro','team'])[1 + g % 3] AS plan, "
        "(g % 1000) * 0.5::float8 AS score, "
        "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS updated_at "
        f"FROM generate_series(1, {rows}) AS g"
    )
    conn.execute(f"ALTER TABLE {SRC}.customers ADD PRIMARY KEY (id)")
    conn.execute(
        f"CREATE TABLE {DST}.customers (id bigint PRIMARY KEY, email text, name text, "
        "plan text, score double precision, updated_at timestamptz)"
    )
    conn.execute(f"INSERT INTO {DST}.customers SELECT * FROM {SRC}.customers")
    conn.execute(f"ANALYZE {SRC}.customers")


def seed_state(project: Path) -> None:
    """State as a run that delivered every row leaves it, written with retl's expressions."""
    from reverse_etl.config import load_project
    from reverse_etl.mapping.dialects import warehouse_mapping
    from reverse_etl.run import Engine

    loaded = load_project(project)
    sync = loaded.syncs["customers"]
    assert sync.config is not None and sync.sql is not None
    engine = Engine(loaded)
    target = engine.target(sync)
    with engine.state_backend("customers") as backend:
        backend.open(None, target, writable=True)  # type: ignore[arg-type]
        session = backend.session  # type: ignore[attr-defined]
        floats = session.float_columns(sync.sql)
        mapping = warehouse_mapping(sync.config, sync.key_field(), floats, "postgres")
        from reverse_etl.mapping.dialects import translate

        statement = translate(
            f"INSERT INTO {STATE}.retl_snapshot (sync, target, key, hash, acknowledged_at) "
            f"SELECT 'customers', '{target.digest}', p.k, {mapping.hash_expression('p')}, now() "
            f"FROM (SELECT {mapping.key_expression} AS k, {mapping.projection} FROM "
            f"{SRC}.customers AS retl_source) AS p",
            "postgres",
        )
        session.execute(statement)
        session.execute(f"ANALYZE {STATE}.retl_snapshot")


def change(conn: psycopg.Connection, rows: int) -> int:
    step = 1000  # 0.1%
    result = conn.execute(
        f"UPDATE {SRC}.customers SET name = name || ' (changed)' WHERE id % {step} = 0"
    )
    return result.rowcount


def limit_diff(conn: psycopg.Connection, project: Path) -> tuple[float, int]:
    """The same diff written by hand and run in PostgreSQL: the changed rows, counted."""
    from reverse_etl.config import load_project
    from reverse_etl.mapping.dialects import translate, warehouse_mapping
    from reverse_etl.run import Engine

    loaded = load_project(project)
    sync = loaded.syncs["customers"]
    assert sync.config is not None
    digest = Engine(loaded).target(sync).digest
    mapping = warehouse_mapping(sync.config, "id", {"score": True}, "postgres")
    sql = translate(
        f"SELECT count(*) FROM (SELECT {mapping.key_expression} AS k, "
        f"{mapping.hash_expression('p')} AS h FROM (SELECT *, id AS k0 FROM {SRC}.customers) AS p) "
        f"AS g LEFT JOIN {STATE}.retl_snapshot AS s ON s.sync = 'customers' AND s.target = "
        f"'{digest}' AND s.key = g.k WHERE s.key IS NULL OR s.hash <> g.h",
        "postgres",
    )
    started = time.perf_counter()
    (n,) = conn.execute(sql).fetchone() or (0,)
    return time.perf_counter() - started, int(n)


def timed(args: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Seconds and peak RSS (MiB) of one retl command in its own process."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wrapper = (
        "import resource, runpy, sys; sys.argv = ['retl'] + sys.argv[1:];"
        "from reverse_etl.entry import main\n"
        "try:\n    main()\nfinally:\n"
        "    print('RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args, "--project-dir", str(cwd)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    del before
    rss = 0.0
    for line in done.stderr.splitlines():
        if line.startswith("RSS_KIB"):
            rss = int(line.split()[1]) / 1024
    return seconds, rss, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = args.rows
    with tempfile.TemporaryDirectory(prefix="retl-bench-whs-") as tmp:
        project = Path(tmp)
        (project / "syncs").mkdir()
        (project / "retl.yml").write_text(RETL_YML)
        (project / "syncs" / "customers.yml").write_text(SYNC)
        with psycopg.connect(URL, autocommit=True) as conn:
            started = time.perf_counter()
            generate(conn, rows)
            seed_state(project)
            setup = time.perf_counter() - started
            changed = change(conn, rows)
            limit_seconds, limit_rows = limit_diff(conn, project)

        plan_s, plan_rss, planned = timed(["plan", "customers", "--json"], project)
        if planned.returncode != 0:
            sys.exit(f"retl plan failed:\n{planned.stderr[-3000:]}")
        document = json.loads(planned.stdout)["syncs"][0]
        run_s, run_rss, ran = timed(["run", "customers", "--json"], project)
        if ran.returncode != 0:
            sys.exit(f"retl run failed:\n{ran.stderr[-3000:]}")
        with psycopg.connect(URL, autocommit=True) as conn:
            (difference,) = conn.execute(
                f"SELECT count(*) FROM ((SELECT * FROM {SRC}.customers EXCEPT SELECT * FROM "
                f"{DST}.customers) UNION ALL (SELECT * FROM {DST}.customers EXCEPT SELECT * "
                f"FROM {SRC}.customers)) AS d"
            ).fetchone() or (None,)
            (load,) = conn.execute("SELECT 1").fetchone() or (None,)
            del load
        replan_s, _, replanned = timed(["plan", "customers", "--json"], project)
        after = json.loads(replanned.stdout)["syncs"][0]["counts"]

    results = {
        "rows": rows,
        "changed": changed,
        "setup_seconds": round(setup, 2),
        "limit_sql_diff_seconds": round(limit_seconds, 2),
        "limit_changed_rows": limit_rows,
        "plan_seconds": round(plan_s, 2),
        "plan_peak_rss_mib": round(plan_rss, 1),
        "plan_fetched_rows": document["fetched_rows"],
        "plan_counts": document["counts"],
        "run_seconds": round(run_s, 2),
        "run_peak_rss_mib": round(run_rss, 1),
        "destination_differs_rows": difference,
        "plan_after_run_counts": after,
        "plan_after_run_seconds": round(replan_s, 2),
        "load_average": os.getloadavg(),
    }
    print(f"rows {rows:,}, changed {changed:,}, load {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<34}{'seconds':>9}{'peak RSS MiB':>14}{'rows fetched':>14}")
    print(f"{'limit: hand-written SQL diff':<34}{limit_seconds:>9.2f}{'-':>14}{0:>14,}")
    print(
        f"{'retl plan (warehouse state)':<34}{plan_s:>9.2f}{plan_rss:>14.1f}"
        f"{document['fetched_rows']:>14,}"
    )
    print(f"{'retl run':<34}{run_s:>9.2f}{run_rss:>14.1f}{'':>14}")
    print(f"ratio plan / limit: {plan_s / limit_seconds:.2f}x")
    print(f"destination rows differing from the source after the run: {difference}")
    print(f"plan after the run: {after}")
    out = Path(__file__).parent / "results" / "warehouse_state.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
