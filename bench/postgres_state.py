"""Benchmark: `state.backend: postgres` against `local`, the same first load through the CLI.

N rows in a DuckDB warehouse go to a file destination (jsonl) with `retl run`, once with state
in `.retl/state/` and once with state in a fresh schema of PostgreSQL; then `retl plan` with
no change and `retl plan` after 0.1% of the rows changed, from a second copy of the project
(no `.retl/`: the postgres one reads its state from the database). Wall time of each command in
its own process, the schema dropped at the end.

    python bench/postgres_state.py --rows 200000

Prints a table and writes bench/results/postgres_state.json. Needs PostgreSQL at
$RETL_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import psycopg

URL = os.environ.get("RETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
RETL = [sys.executable, "-m", "reverse_etl"]
SYNC = """warehouse: wh
source:
  sql: select id, email, name, plan from customers
destination:
  name: out
  object: customers
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
  name: name
  plan: plan
"""


def project(root: Path, warehouse: Path, state: str) -> Path:
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(
        f"version: 1\nwarehouses:\n  wh:\n    url: duckdb:///{warehouse}\n"
        "destinations:\n  out:\n    type: file\n    path: out\n    format: jsonl\n" + state
    )
    (root / "syncs" / "customers.yml").write_text(SYNC)
    return root


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [*RETL, *args, "--project-dir", str(cwd)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"retl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    rows = parser.parse_args().rows
    schema = f"bench_pgstate_{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="retl-bench-") as tmp:
        base = Path(tmp)
        warehouse = base / "wh.duckdb"
        con = duckdb.connect(str(warehouse))
        con.execute(
            "CREATE TABLE customers AS SELECT range AS id, 'user' || range || '@example.com' "
            "AS email, 'Name ' || range AS name, ['free', 'pro', 'team'][1 + range % 3] AS plan "
            f"FROM range(1, {rows + 1})"
        )
        con.close()
        backends = {
            "local": "",
            "postgres": f"state:\n  backend: postgres\n  url: {URL}\n  schema: {schema}\n",
        }
        try:
            for name, state in backends.items():
                root = project(base / name, warehouse, state)
                figures = results[name] = {}
                figures["first run"] = timed(["run", "customers"], root)
                if name == "local":  # the second copy needs the first one's .retl/
                    other = root
                else:
                    other = base / f"{name}-copy"
                    other.mkdir()
                    shutil.copy(root / "retl.yml", other / "retl.yml")
                    shutil.copytree(root / "syncs", other / "syncs")
                figures["plan, no change"] = timed(["plan", "customers"], other)
            con = duckdb.connect(str(warehouse))
            con.execute("UPDATE customers SET name = name || ' (changed)' WHERE id % 1000 = 0")
            con.close()
            for name in backends:
                other = base / name if name == "local" else base / f"{name}-copy"
                results[name]["plan, 0.1% changed"] = timed(["plan", "customers"], other)
        finally:
            with psycopg.connect(URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    steps = list(results["local"])
    print(f"{rows:,} rows, DuckDB warehouse -> file destination; wall seconds")
    print(f"{'':22}" + "".join(f"{b:>12}" for b in results))
    for step in steps:
        print(f"{step:22}" + "".join(f"{results[b][step]:12.2f}" for b in results))
    out = Path(__file__).parent / "results" / "postgres_state.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
