"""Benchmark suite: every stage of `retl` next to the physical limit of this machine, in one run.

From a clean clone (`pip install -e .`, PostgreSQL and MariaDB on loopback as for the tests):

    python bench/run.py --rows 1000000

generates a 10-column DuckDB source of N rows and its second snapshot (5% of rows changed, 1%
added, 1% removed), then measures, stage by stage, retl (as a user runs it: a subprocess of the
CLI, or for `read` of the library) and the limit (a hand-written subprocess doing the same work
with the raw tools), and prints seconds, rows/s, peak RSS of each subprocess and the ratio:

  read            retl's warehouse stream (source -> Arrow)  | DuckDB -> Arrow, raw
  plan            `retl plan`, 5/1/1 changes                 | hand-written DuckDB md5 diff
  no-op run       `retl run`, nothing changed                | read + md5 diff (finds nothing)
  pg first load   `retl run` into an empty PostgreSQL table  | DuckDB CSV -> COPY -> one merge
  pg changed run  `retl run`, 5/1/1                          | COPY -> merge + delete of removed
  my first load   `retl run` into MariaDB (type: sql)        | LOAD DATA LOCAL INFILE -> merge
  my changed run  `retl run`, 5/1/1                          | LOAD DATA -> merge + DELETE JOIN
  wh-state plan   `retl plan`, state.backend: warehouse (PG) | md5 diff in PostgreSQL -> COPY out
  api             `retl run` into a loopback JSON sink       | raw httpx client (bench/api.py)

A stage whose server or feature is missing is skipped with a note. Writes
bench/results/<commit>.json. Other processes on the machine skew both columns alike; compare
the ratios, and run it twice.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

COLUMNS = (
    "id",
    "email",
    "first_name",
    "last_name",
    "plan",
    "score",
    "amount",
    "active",
    "created_at",
    "updated_at",
)
NAMES = ", ".join(COLUMNS)
VALUES = ", ".join(COLUMNS[1:])
PG_DDL = (
    "id BIGINT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT, plan TEXT, "
    "score DOUBLE PRECISION, amount NUMERIC(12,2), active BOOLEAN, created_at TIMESTAMP, "
    "updated_at TIMESTAMP"
)
MY_DDL = (
    "id BIGINT PRIMARY KEY, email VARCHAR(255), first_name VARCHAR(255), "
    "last_name VARCHAR(255), plan VARCHAR(255), score DOUBLE, amount DECIMAL(12,2), "
    "active BOOLEAN, created_at DATETIME(6), updated_at DATETIME(6)"
)
API_MAX_ROWS = 200_000


# -- data ---------------------------------------------------------------------------------------


def build_source(path: Path, rows: int) -> None:
    """`bench.customers_v1` (N rows), `bench.customers_v2` (5% changed, 1% removed, 1% added)
    and the view `bench.customers` the syncs read, pointing at v1."""
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA IF NOT EXISTS bench")
    con.execute(
        f"""CREATE OR REPLACE TABLE bench.customers_v1 AS
        SELECT range AS id, 'user' || range || '@example.com' AS email,
               'First' || (range % 1000) AS first_name, 'Last' || (range % 7919) AS last_name,
               ['free', 'pro', 'team', 'enterprise'][1 + range % 4] AS plan,
               (range % 1000) / 10.0 AS score,
               CAST((range % 100000) / 100.0 AS DECIMAL(12,2)) AS amount,
               range % 3 = 0 AS active,
               TIMESTAMP '2024-01-01' + INTERVAL (range % 100000) SECOND AS created_at,
               TIMESTAMP '2025-01-01' + INTERVAL (range % 50000) SECOND AS updated_at
        FROM range({rows})"""
    )
    con.execute(
        f"""CREATE OR REPLACE TABLE bench.customers_v2 AS
        SELECT id, email, first_name, last_name,
               CASE WHEN id % 20 = 0 THEN 'changed' ELSE plan END AS plan,
               CASE WHEN id % 20 = 0 THEN score + 1 ELSE score END AS score,
               amount, active, created_at, updated_at
        FROM bench.customers_v1 WHERE id % 100 <> 1
        UNION ALL
        SELECT {rows} + range, 'new' || range || '@example.com', 'New', 'Person', 'free', 0, 0,
               true, TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01'
        FROM range({max(rows // 100, 1)})"""
    )
    con.close()
    use_version(path, 1)


def use_version(path: Path, version: int) -> None:
    con = duckdb.connect(str(path))
    con.execute(
        f"CREATE OR REPLACE VIEW bench.customers AS SELECT * FROM bench.customers_v{version}"
    )
    con.close()


def hand_hash(alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return f"md5(concat_ws(chr(31), {', '.join(prefix + c for c in COLUMNS[1:])}))"


def build_hand_state(source: Path, state: Path, version: int) -> None:
    """The snapshot the hand-written diff compares against: (id, md5 of the row)."""
    con = duckdb.connect(str(state))
    con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
    con.execute(
        f"CREATE OR REPLACE TABLE state AS SELECT id, {hand_hash()} AS hash "
        f"FROM src.bench.customers_v{version}"
    )
    con.close()


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    rss_mib: float
    output: str = ""


TIME = Path("/usr/bin/time")


def measure(
    argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Measured:
    """Wall seconds and peak RSS of one subprocess. Linux carries a process's RSS high-water
    mark over fork and exec, so a child of this (large) process would report at least our
    RSS: the child is started by GNU time (a small process) when there is one, which reports
    the child's own peak; otherwise its rusage from wait4 (an upper bound)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        command = list(argv)
        if TIME.exists():
            command = [str(TIME), "-f", "%M", "-o", rss.name, *command]
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "120", **(env or {})},
            cwd=cwd,
        )
        out_chunks: list[bytes] = []
        err_chunks: list[bytes] = []
        readers = [
            threading.Thread(target=lambda: out_chunks.append(process.stdout.read())),  # type: ignore[union-attr]
            threading.Thread(target=lambda: err_chunks.append(process.stderr.read())),  # type: ignore[union-attr]
        ]
        for reader in readers:
            reader.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        for reader in readers:
            reader.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        output = b"".join(out_chunks).decode(errors="replace")
        if process.returncode != 0:
            errors = b"".join(err_chunks).decode(errors="replace")
            raise RuntimeError(
                f"{' '.join(argv[:4])} ... failed:\n{output[-2000:]}\n{errors[-2000:]}"
            )
        reported = rss.read().strip().splitlines()
        kib = int(reported[-1]) if reported and reported[-1].isdigit() else usage.ru_maxrss
    return Measured(seconds, kib / 1024, output)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


def retl(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reverse_etl", *args, "--project-dir", str(project)]


@dataclass
class Stage:
    name: str
    rows: int
    retl: Measured | None = None
    limit: Measured | None = None
    retl_what: str = ""
    limit_what: str = ""
    note: str = ""
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.retl is None or self.limit is None:
            return None
        return self.retl.seconds / self.limit.seconds

    def to_json(self) -> dict[str, Any]:
        def side(m: Measured | None, what: str) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "what": what,
                "seconds": round(m.seconds, 3),
                "rows_per_s": round(self.rows / m.seconds) if m.seconds else None,
                "peak_rss_mib": round(m.rss_mib, 1),
            }

        return {
            "rows": self.rows,
            "retl": side(self.retl, self.retl_what),
            "limit": side(self.limit, self.limit_what),
            "ratio": round(self.ratio, 3) if self.ratio is not None else None,
            "note": self.note or None,
            **({"checks": self.checks} if self.checks else {}),
        }


# -- the project --------------------------------------------------------------------------------


def write_project(
    root: Path, source: Path, pg_url: str, my_url: str, pg_table: str, my_table: str
) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "retl.yml").write_text(
        textwrap.dedent(
            f"""\
            version: 1
            warehouses:
              bench:
                url: duckdb:///{source}
            destinations:
              files:
                type: file
                path: out
                format: parquet
              pg:
                type: postgres
                url: ${{BENCH_PG_URL}}
              my:
                type: sql
                url: ${{BENCH_MY_URL}}
            """
        )
    )
    mapping = "".join(f"  {c}: {c}\n" for c in COLUMNS)
    for name, destination, target in (
        ("to_files", "files", "customers"),
        ("to_pg", "pg", pg_table),
        ("to_my", "my", my_table),
    ):
        (root / "syncs" / f"{name}.yml").write_text(
            f"warehouse: bench\nsource:\n  sql: select * from bench.customers\n"
            f"destination:\n  name: {destination}\n  object: {target}\nmode: upsert\n"
            f"primary_key: id\nmapping:\n{mapping}on_removed: delete\nallow_destructive: true\n"
            "limits:\n  max_delete_ratio: 0.5\n"
        )
    os.environ["BENCH_PG_URL"] = pg_url
    os.environ["BENCH_MY_URL"] = my_url


# -- stages -------------------------------------------------------------------------------------

READ_RETL = """
import sys
from pathlib import Path
from reverse_etl.plan.source import READ_BATCH_ROWS
from reverse_etl.warehouse import open_warehouse
with open_warehouse("bench", "duckdb:///" + sys.argv[1], Path(".")) as warehouse:
    rows = sum(b.num_rows for b in warehouse.stream("select * from bench.customers", READ_BATCH_ROWS))
print(rows)
"""

READ_RAW = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
con.execute("SET enable_progress_bar = false")
rows = sum(b.num_rows for b in con.sql("select * from bench.customers").to_arrow_reader(100_000))
print(rows)
"""

# The hand-written diff: read, md5 of each row, join to the (id, md5) snapshot, keep the new
# and changed rows in full and the removed keys: what `retl plan` computes, without retl.
MD5_DIFF = """
import sys, duckdb
con = duckdb.connect(config={{"memory_limit": "512MB", "temp_directory": sys.argv[3],
                              "preserve_insertion_order": "false"}})
con.execute("SET enable_progress_bar = false")
con.execute(f"ATTACH '{{sys.argv[1]}}' AS src (READ_ONLY)")
con.execute(f"ATTACH '{{sys.argv[2]}}' AS st (READ_ONLY)")
con.execute('''CREATE TABLE ops AS SELECT s.*, p.id IS NULL AS new FROM
    (SELECT *, {hash} AS hash FROM src.bench.customers) s
    LEFT JOIN st.state p ON p.id = s.id WHERE p.id IS NULL OR p.hash <> s.hash''')
con.execute('''INSERT INTO ops (id) SELECT id FROM st.state p
    WHERE NOT EXISTS (SELECT 1 FROM src.bench.customers s WHERE s.id = p.id)''')
print(con.execute("SELECT count(*) FROM ops").fetchall()[0][0])
"""


def md5_diff(source: Path, state: Path, work: Path) -> list[str]:
    return python(MD5_DIFF.format(hash=hand_hash()), str(source), str(state), str(work / "tmp"))


def plan_counts(output: str) -> dict[str, int]:
    counts = json.loads(output)["syncs"][0]["counts"]
    return {k: int(v) for k, v in counts.items() if isinstance(v, int)}


def export_rows(source: Path, state: Path | None, columns: str) -> str:
    """Python that writes the rows to load to `raw.csv` (and, with the hand-written snapshot
    `state`, only the new and changed rows, plus the removed ids to `removed.csv`): the
    changed-run limit sends only the changes too."""
    rows = f"SELECT {columns} FROM bench.customers"
    removed = ""
    if state is not None:
        rows = (
            f"SELECT {columns} FROM (SELECT s.* FROM (SELECT *, {hand_hash()} AS hash FROM "
            "bench.customers) s LEFT JOIN st.state p ON p.id = s.id "
            "WHERE p.id IS NULL OR p.hash <> s.hash)"
        )
        removed = (
            'con.execute(f"COPY (SELECT id FROM st.state p WHERE NOT EXISTS (SELECT 1 FROM '
            "bench.customers s WHERE s.id = p.id)) TO '{work}/removed.csv' (HEADER false)\")"
        )
    attach = f"con.execute(\"ATTACH '{state}' AS st (READ_ONLY)\")" if state else ""
    return f"""
    import duckdb
    work = sys.argv[2]
    con = duckdb.connect("{source}", read_only=True)
    con.execute("SET enable_progress_bar = false")
    {attach}
    con.execute(f"COPY ({rows}) TO '{{work}}/raw.csv' (HEADER false)")
    {removed}
    con.close()
    """


def pg_raw_load(source: Path, pg_url: str, table: str, work: Path, state: Path | None) -> list[str]:
    """COPY the rows into a temp table, one INSERT ... ON CONFLICT; with `state`, only the
    changes (md5 diff in DuckDB first) and one DELETE of the removed ids."""
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
    code = f"""
    import sys, psycopg
    {textwrap.indent(textwrap.dedent(export_rows(source, state, NAMES)), "    ").strip()}
    with psycopg.connect(sys.argv[3]) as conn:
        conn.execute("CREATE TEMP TABLE raw_tmp ({PG_DDL.replace(" PRIMARY KEY", "")})")
        with conn.cursor().copy("COPY raw_tmp ({NAMES}) FROM STDIN (FORMAT csv)") as copy:
            with open(work + "/raw.csv", "rb") as f:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
        conn.execute("INSERT INTO {table} ({NAMES}) SELECT {NAMES} FROM raw_tmp "
                     "ON CONFLICT (id) DO UPDATE SET {updates}")
        if {state is not None}:
            conn.execute("CREATE TEMP TABLE raw_removed (id BIGINT)")
            with conn.cursor().copy("COPY raw_removed FROM STDIN (FORMAT csv)") as copy:
                copy.write(open(work + "/removed.csv", "rb").read())
            conn.execute("DELETE FROM {table} r USING raw_removed d WHERE d.id = r.id")
        conn.commit()
    """
    return python(code, str(source), str(work), pg_url)


def my_connect_args(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 3306,
        "user": parsed.username or "root",
        "password": parsed.password or "",
        "database": parsed.database,
    }


def my_raw_load(source: Path, my_url: str, table: str, work: Path, state: Path | None) -> list[str]:
    """LOAD DATA LOCAL INFILE into a temp table, one INSERT ... ON DUPLICATE KEY UPDATE; with
    `state`, only the changes and one DELETE ... JOIN of the removed ids."""
    exported = ", ".join("CAST(active AS INT) AS active" if c == "active" else c for c in COLUMNS)
    updates = ", ".join(f"{c} = VALUES({c})" for c in COLUMNS[1:])
    load = "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\\\"' LINES TERMINATED BY '\\\\n'"
    code = f"""
    import json, sys, pymysql
    {textwrap.indent(textwrap.dedent(export_rows(source, state, exported)), "    ").strip()}
    conn = pymysql.connect(**json.loads(sys.argv[3]), local_infile=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE raw_tmp ({MY_DDL})")
        cur.execute(f"LOAD DATA LOCAL INFILE '{{work}}/raw.csv' INTO TABLE raw_tmp {load} ({NAMES})")
        cur.execute("INSERT INTO {table} ({NAMES}) SELECT {NAMES} FROM raw_tmp "
                    "ON DUPLICATE KEY UPDATE {updates}")
        if {state is not None}:
            cur.execute("CREATE TEMPORARY TABLE raw_removed (id BIGINT PRIMARY KEY)")
            cur.execute(f"LOAD DATA LOCAL INFILE '{{work}}/removed.csv' INTO TABLE raw_removed")
            cur.execute("DELETE r FROM {table} r JOIN raw_removed d ON d.id = r.id")
    conn.commit()
    conn.close()
    """
    return python(code, str(source), str(work), json.dumps(my_connect_args(my_url)))


def pg_equal(pg_url: str, a: str, b: str) -> bool:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {NAMES} FROM {a} EXCEPT SELECT {NAMES} FROM {b}) x), "
            f"(SELECT count(*) FROM (SELECT {NAMES} FROM {b} EXCEPT SELECT {NAMES} FROM {a}) y)"
        ).fetchone()
    return row == (0, 0)


def my_equal(my_url: str, a: str, b: str) -> bool:
    import pymysql

    conn = pymysql.connect(**my_connect_args(my_url))
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {a}")
        na = cur.fetchone()
        cur.execute(
            f"SELECT count(*) FROM {a} x JOIN {b} y ON x.id = y.id AND "
            + " AND ".join(f"x.{c} <=> y.{c}" for c in COLUMNS[1:])
        )
        same = cur.fetchone()
        cur.execute(f"SELECT count(*) FROM {b}")
        nb = cur.fetchone()
    conn.close()
    return na == same == nb


def pg_available(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL not reachable at {url.split('@')[-1]}: {exc.__class__.__name__}"
    return None


def my_available(url: str) -> str | None:
    try:
        import pymysql

        conn = pymysql.connect(**my_connect_args(url), connect_timeout=3, local_infile=True)
        with conn.cursor() as cur:
            cur.execute("SHOW VARIABLES LIKE 'local_infile'")
            row = cur.fetchone()
        conn.close()
    except Exception as exc:
        return f"MariaDB not reachable at {url.split('@')[-1]}: {exc.__class__.__name__}"
    if not row or str(row[1]).upper() not in ("ON", "1"):
        return "the MariaDB server has local_infile=OFF: the raw LOAD DATA LOCAL path cannot run"
    return None


def warehouse_backend_missing() -> str | None:
    """The warehouse state backend, when this checkout has one (another branch builds it): a
    module of reverse_etl/state/ named after it. The stage also checks that the run wrote its
    state into PostgreSQL."""
    state = REPO / "reverse_etl" / "state"
    if any("warehouse" in path.stem for path in state.rglob("*.py")):
        return None
    return "state.backend: warehouse is not implemented in this checkout (runs use local state)"


# -- the suite ----------------------------------------------------------------------------------


def run_suite(args: argparse.Namespace, work: Path) -> list[Stage]:
    rows = args.rows
    source = work / "source.duckdb"
    hand_v1 = work / "hand_v1.duckdb"
    suffix = uuid.uuid4().hex[:8]
    pg_retl, pg_raw = f"bench_retl_{suffix}", f"bench_raw_{suffix}"
    my_retl, my_raw = f"bench_retl_{suffix}", f"bench_raw_{suffix}"
    project = work / "project"
    stages: list[Stage] = []
    wanted = set(args.stages.split(",")) if args.stages else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    def log(stage: Stage) -> None:
        stages.append(stage)
        print(f"  {format_row(stage)}", flush=True)

    started = time.perf_counter()
    # A pip install compiles retl to bytecode; an editable checkout under
    # PYTHONDONTWRITEBYTECODE would compile every module of it again in each measured run.
    compileall.compile_dir(REPO / "reverse_etl", quiet=1)
    build_source(source, rows)
    build_hand_state(source, hand_v1, 1)
    write_project(project, source, args.pg_url, args.mysql_url, pg_retl, my_retl)
    (work / "tmp").mkdir()
    print(f"source: {rows:,} rows x 10 columns generated in {time.perf_counter() - started:.1f} s")
    print(f"  {HEADER}")

    if want("read"):
        stage = Stage(
            "read", rows, retl_what="warehouse.stream -> Arrow", limit_what="DuckDB -> Arrow"
        )
        stage.limit = measure(python(READ_RAW, str(source)))
        stage.retl = measure(python(READ_RETL, str(source)))
        log(stage)

    # Deliver v1 to files: the state the plan and no-op stages diff against.
    first = measure(retl(project, "run", "to_files", "--yes"))
    log(
        Stage(
            "files first load",
            rows,
            retl=first,
            retl_what="retl run (parquet files)",
            note="no limit measured",
        )
    )

    if want("noop"):
        stage = Stage(
            "no-op run", rows, retl_what="retl run, nothing changed", limit_what="read + md5 diff"
        )
        stage.limit = measure(md5_diff(source, hand_v1, work))
        stage.retl = measure(retl(project, "run", "to_files", "--yes"))
        log(stage)

    use_version(source, 2)
    if want("plan"):
        stage = Stage(
            "plan 5/1/1", rows, retl_what="retl plan --json", limit_what="hand-written md5 diff"
        )
        stage.limit = measure(md5_diff(source, hand_v1, work))
        stage.retl = measure(retl(project, "plan", "to_files", "--json"))
        with contextlib.suppress(ValueError, KeyError, IndexError):
            stage.checks["counts"] = plan_counts(stage.retl.output)
        with contextlib.suppress(ValueError, IndexError):
            stage.checks["limit_rows"] = int(stage.limit.output.split()[-1])
        log(stage)
    use_version(source, 1)

    missing = pg_available(args.pg_url)
    if missing is None and (want("pg") or want("pg-first") or want("pg-changed")):
        import psycopg

        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            for table in (pg_retl, pg_raw):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(f"CREATE TABLE {table} ({PG_DDL})")
        try:
            stage = Stage("pg first load", rows, retl_what="retl run", limit_what="COPY + merge")
            stage.limit = measure(pg_raw_load(source, args.pg_url, pg_raw, work, None))
            stage.retl = measure(retl(project, "run", "to_pg", "--yes"))
            stage.checks["equal"] = pg_equal(args.pg_url, pg_retl, pg_raw)
            log(stage)
            use_version(source, 2)
            stage = Stage(
                "pg changed run",
                rows,
                retl_what="retl run 5/1/1",
                limit_what="md5 diff, COPY changes + merge + delete",
            )
            stage.limit = measure(pg_raw_load(source, args.pg_url, pg_raw, work, hand_v1))
            stage.retl = measure(retl(project, "run", "to_pg", "--yes"))
            stage.checks["equal"] = pg_equal(args.pg_url, pg_retl, pg_raw)
            log(stage)
        finally:
            use_version(source, 1)
            if not args.keep:
                with psycopg.connect(args.pg_url, autocommit=True) as conn:
                    for table in (pg_retl, pg_raw):
                        conn.execute(f"DROP TABLE IF EXISTS {table}")
    elif missing is not None:
        log(Stage("pg first load", rows, note=missing))

    missing = my_available(args.mysql_url)
    if missing is None and want("my"):
        import pymysql

        conn = pymysql.connect(**my_connect_args(args.mysql_url), autocommit=True)
        with conn.cursor() as cur:
            for table in (my_retl, my_raw):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
                cur.execute(f"CREATE TABLE {table} ({MY_DDL})")
        try:
            stage = Stage(
                "my first load",
                rows,
                retl_what="retl run (type: sql)",
                limit_what="LOAD DATA + merge",
            )
            stage.limit = measure(my_raw_load(source, args.mysql_url, my_raw, work, None))
            stage.retl = measure(retl(project, "run", "to_my", "--yes"))
            stage.checks["equal"] = my_equal(args.mysql_url, my_retl, my_raw)
            log(stage)
            use_version(source, 2)
            stage = Stage(
                "my changed run",
                rows,
                retl_what="retl run 5/1/1",
                limit_what="md5 diff, LOAD DATA changes + merge + delete",
            )
            stage.limit = measure(my_raw_load(source, args.mysql_url, my_raw, work, hand_v1))
            stage.retl = measure(retl(project, "run", "to_my", "--yes"))
            stage.checks["equal"] = my_equal(args.mysql_url, my_retl, my_raw)
            log(stage)
        finally:
            use_version(source, 1)
            if not args.keep:
                with conn.cursor() as cur:
                    for table in (my_retl, my_raw):
                        cur.execute(f"DROP TABLE IF EXISTS {table}")
            conn.close()
    elif missing is not None:
        log(Stage("my first load", rows, note=missing))

    if want("wh-state"):
        missing = warehouse_backend_missing() or pg_available(args.pg_url)
        if missing is None:
            log(warehouse_state_stage(args, work, source, rows))
        else:
            log(Stage("wh-state plan", rows, note=f"skipped: {missing}"))

    if want("api"):
        log(api_stage(min(rows, API_MAX_ROWS), work))
    return stages


def warehouse_state_stage(args: argparse.Namespace, work: Path, source: Path, rows: int) -> Stage:
    """`retl plan` with the snapshot in PostgreSQL, against an md5 diff run in PostgreSQL that
    COPYs the changed rows out: the source lives in PostgreSQL too."""
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    schema = f"bench_state_{suffix}"
    table = f"bench_src_{suffix}"
    stage = Stage(
        "wh-state plan", rows, retl_what="retl plan, state in PG", limit_what="md5 diff in PG"
    )
    root = work / "wh_project"
    (root / "syncs").mkdir(parents=True)
    csv_dir = work / "pg_csv"
    csv_dir.mkdir()
    con = duckdb.connect(str(source), read_only=True)
    for version in (1, 2):
        con.execute(
            f"COPY (SELECT {NAMES} FROM bench.customers_v{version}) TO '{csv_dir}/v{version}.csv' (HEADER false)"
        )
    con.close()
    pg_hash = "md5(concat_ws(chr(31), " + ", ".join(f"{c}::text" for c in COLUMNS[1:]) + "))"
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        for version in (1, 2):
            conn.execute(f"CREATE TABLE {table}_v{version} ({PG_DDL})")
            with conn.cursor().copy(
                f"COPY {table}_v{version} ({NAMES}) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write((csv_dir / f"v{version}.csv").read_bytes())
        conn.execute(f"CREATE VIEW {table} AS SELECT * FROM {table}_v1")
        conn.execute(f"CREATE TABLE {table}_hand AS SELECT id, {pg_hash} AS hash FROM {table}_v1")
        conn.execute(f"ALTER TABLE {table}_hand ADD PRIMARY KEY (id)")
    try:
        mapping = "".join(f"  {c}: {c}\n" for c in COLUMNS)
        (root / "retl.yml").write_text(
            f"version: 1\nwarehouses:\n  pg:\n    url: ${{BENCH_PG_URL}}\n"
            f"destinations:\n  files:\n    type: file\n    path: out\n    format: parquet\n"
            f"state:\n  backend: warehouse\n  warehouse: pg\n  schema: {schema}\n"
        )
        (root / "syncs" / "wh.yml").write_text(
            f"warehouse: pg\nsource:\n  sql: select * from {table}\ndestination:\n  name: files\n"
            f"  object: customers\nmode: upsert\nprimary_key: id\nmapping:\n{mapping}"
            "on_removed: delete\nallow_destructive: true\nlimits:\n  max_delete_ratio: 0.5\n"
        )
        measure(retl(root, "run", "wh", "--yes"))
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", [schema]
            ).fetchone()
            conn.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {table}_v2")
        if not tables or not tables[0]:
            stage.note = "skipped: the run wrote no state into PostgreSQL (backend not active)"
            return stage
        code = f"""
        import sys, psycopg
        with psycopg.connect(sys.argv[1]) as conn, conn.cursor() as cur:
            n = 0
            with cur.copy('''COPY (SELECT s.* FROM {table} s LEFT JOIN {table}_hand h ON h.id = s.id
                WHERE h.id IS NULL OR h.hash <> {pg_hash}
                UNION ALL SELECT h.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
                FROM {table}_hand h WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE s.id = h.id))
                TO STDOUT''') as copy:
                for chunk in copy:
                    n += bytes(chunk).count(b"\\n")
        print(n)
        """
        stage.limit = measure(python(code, args.pg_url))
        stage.retl = measure(retl(root, "plan", "wh", "--json"))
        with contextlib.suppress(ValueError, KeyError, IndexError):
            stage.checks["counts"] = plan_counts(stage.retl.output)
        return stage
    finally:
        if not args.keep:
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f"DROP VIEW IF EXISTS {table}")
                for name in (f"{table}_v1", f"{table}_v2", f"{table}_hand"):
                    conn.execute(f"DROP TABLE IF EXISTS {name}")
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def api_stage(rows: int, work: Path) -> Stage:
    """retl into bench/api.py's loopback sink (batches of 1,000) next to its raw client."""
    import api  # bench/api.py

    stage = Stage(
        "api (http)",
        rows,
        retl_what="retl run, batches of 1,000",
        limit_what="raw httpx client",
        note="bench/api.py's 4-column source",
    )
    server, sink = api.serve(None)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        stage.limit = measure(python(API_RAW, url, str(rows)))
        sink.records = 0
        root = work / "api"
        api.project(root, url, rows, 1000, None)
        stage.retl = measure(retl(root, "run", "bench", "--yes"))
        stage.checks["records_received"] = sink.records
    finally:
        server.shutdown()
    if rows == API_MAX_ROWS:
        stage.note += f", capped at {API_MAX_ROWS:,} rows"
    return stage


API_RAW = f"""
import sys
sys.path.insert(0, {str(BENCH)!r})
import api
print(api.raw_post(sys.argv[1], int(sys.argv[2]), 1000))
"""


# -- output -------------------------------------------------------------------------------------

HEADER = (
    f"{'stage':<17}{'retl s':>8}{'retl rows/s':>13}{'RSS MiB':>9}"
    f"{'limit s':>9}{'limit rows/s':>14}{'RSS MiB':>9}{'ratio':>7}  note"
)


def format_row(stage: Stage) -> str:
    def side(m: Measured | None) -> tuple[str, str, str]:
        if m is None:
            return "-", "-", "-"
        return f"{m.seconds:.2f}", f"{stage.rows / m.seconds:,.0f}", f"{m.rss_mib:.0f}"

    r, lim = side(stage.retl), side(stage.limit)
    ratio = f"{stage.ratio:.2f}" if stage.ratio is not None else "-"
    note = stage.note
    if "equal" in stage.checks:
        note = ("equal to raw" if stage.checks["equal"] else "DIFFERS from raw") + (
            f"; {note}" if note else ""
        )
    if "counts" in stage.checks:
        c = stage.checks["counts"]
        note = f"+{c.get('create', 0):,} ~{c.get('update', 0):,} -{c.get('delete', 0):,}" + (
            f"; {note}" if note else ""
        )
    return f"{stage.name:<17}{r[0]:>8}{r[1]:>13}{r[2]:>9}{lim[0]:>9}{lim[1]:>14}{lim[2]:>9}{ratio:>7}  {note}"


def markdown(stages: list[Stage]) -> str:
    lines = [
        "| stage | retl | limit | retl s | limit s | ratio | retl peak RSS | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for s in stages:
        lines.append(
            f"| {s.name} | {s.retl_what or '-'} | {s.limit_what or '-'} | "
            f"{f'{s.retl.seconds:.2f}' if s.retl else '-'} | "
            f"{f'{s.limit.seconds:.2f}' if s.limit else '-'} | "
            f"{f'{s.ratio:.2f}x' if s.ratio is not None else '-'} | "
            f"{f'{s.retl.rss_mib:.0f} MiB' if s.retl else '-'} | {format_row(s).split('  ')[-1].strip()} |"
        )
    return "\n".join(lines)


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("RETL_TEST_MYSQL_URL", "mysql+pymysql://root:@127.0.0.1:3306/test"),
    )
    parser.add_argument(
        "--stages", help="comma-separated: read,noop,plan,pg,my,wh-state,api (default: all)"
    )
    parser.add_argument("--work-dir", type=Path, help="where to put the data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data and the database tables")
    parser.add_argument("--out", type=Path, help="default: bench/results/<commit>.json")
    args = parser.parse_args(argv)

    before = machine()
    started = time.perf_counter()
    if args.work_dir is not None:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="retl-bench-", dir=args.work_dir))
    try:
        stages = run_suite(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    total = time.perf_counter() - started
    after = machine()
    print(
        f"\n{len(stages)} stages in {total:.0f} s; load average before {before['load_average']}, after {after['load_average']} on {after['cpus']} CPUs\n"
    )
    print(markdown(stages))
    revision = commit()
    out = args.out or BENCH / "results" / f"{revision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "commit": revision,
                "rows": args.rows,
                "seconds": round(total, 1),
                "machine_before": before,
                "machine_after": after,
                "stages": {s.name: s.to_json() for s in stages},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    failed = [s.name for s in stages if s.checks.get("equal") is False]
    if failed:
        sys.exit(f"the destination differs from the raw path after: {', '.join(failed)}")


if __name__ == "__main__":
    main()
