"""SIGTERM while the postgres destination COPYs or merges a batch: after the grace period the
statement is cancelled, its transaction does not commit, and retl exits promptly as
`interrupted` (issue 16). Real PostgreSQL, a real `retl run` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from reverse_etl.config import load_project
from reverse_etl.interrupt import GRACE_SECONDS
from reverse_etl.run import Engine, RunOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
GENEROUS_SECONDS = 15.0
SLOW_TRIGGER = """
CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(120); RETURN NULL; END $$;
CREATE TRIGGER slow AFTER INSERT OR UPDATE ON {schema}.dst
FOR EACH STATEMENT EXECUTE FUNCTION {schema}.slow();
"""


def project(root: Path, url: str, schema: str) -> None:
    (root / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": url}},
        "destinations": {"pg": {"type": "postgres", "url": url}},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    sync = {
        "warehouse": "wh",
        "source": {"sql": f"select id, name from {schema}.src"},
        "destination": {"name": "pg", "object": f"{schema}.dst"},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": {"id": "id", "name": "name"},
    }
    (root / "syncs" / "people.yml").write_text(yaml.safe_dump(sync))


@pytest.mark.postgres
@pytest.mark.parametrize("load", ["first-load-copy", "merge"])
def test_sigterm_during_a_slow_destination_statement_exits_without_committing(
    postgres_url: str, pg_schema: str, tmp_path: Path, clean_env: None, load: str
) -> None:
    root = tmp_path / "project"
    project(root, postgres_url, pg_schema)
    conn: psycopg.Connection[Any] = psycopg.connect(postgres_url, autocommit=True)
    conn.execute(f"CREATE TABLE {pg_schema}.src (id integer, name text)")
    conn.execute(f"CREATE TABLE {pg_schema}.dst (id integer PRIMARY KEY, name text)")
    conn.execute(f"INSERT INTO {pg_schema}.src SELECT g, 'a' FROM generate_series(1, 100) g")
    if load == "merge":
        engine = Engine(load_project(root))
        assert engine.run(engine.sync("people"), RunOptions()).status == "success"
        conn.execute(f"UPDATE {pg_schema}.src SET name = 'b'")
    conn.execute(SLOW_TRIGGER.format(schema=pg_schema))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "reverse_etl", "run", "people", "--project-dir", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        sleeping = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND "
            f"application_name = 'retl:pg' AND query LIKE '%{pg_schema}%' AND "
            "query NOT LIKE '%pg_stat_activity%'"
        ).fetchall()[0][0]
        if sleeping:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()

    process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    try:
        out, err = process.communicate(timeout=GENEROUS_SECONDS + GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"retl still running long after SIGTERM: {err}") from None
    seconds = time.monotonic() - began

    print(f"{load}: exited {seconds:.2f} s after SIGTERM (grace {GRACE_SECONDS:g} s)")
    assert process.returncode == 143, err
    assert "interrupted" in out + err  # the run's summary is on stdout
    names = {n for (n,) in conn.execute(f"SELECT name FROM {pg_schema}.dst").fetchall()}
    assert names == ({"a"} if load == "merge" else set())  # the batch did not commit
    last = Engine(load_project(root)).run_log.last("people")
    assert last is not None and last.status == "interrupted"
    assert last.counts.get("create", 0) == 0 and last.counts.get("update", 0) == 0
    conn.close()
