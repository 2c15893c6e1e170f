"""What stops a run with `state.backend: warehouse` never waits on the server: a signal
cancels the running statement and closes the session, a query the warehouse cancels fails the
run clearly, and both release the lock at once (issue 16). Real PostgreSQL, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml
from test_warehouse_backend import REPO_ROOT, WarehouseProject

from reverse_etl.interrupt import GRACE_SECONDS

# Rows the first fetch batch holds (plan.warehouse_diff.FETCH_BATCH_ROWS): with more, the rest
# stream while DuckDB reads the COPY; with fewer slow ones, the first batch itself is slow.
FIRST_BATCH = 50_000
MARKER = "retl_stops_marker"
GENEROUS_SECONDS = 15.0


def slow_copy_sync(wp: WarehouseProject, fast_rows: int, name: str = "people") -> None:
    """A source whose rows after `fast_rows` take 0.2 s each, only in the diff's COPY (the
    count pass over the same source stays quick), so a test can act mid-COPY."""
    wp.write_sync(
        name,
        source={
            "sql": f"select g as id, 'n' || g as name from generate_series(1, {fast_rows + 200}) "
            f"g where case when g > {fast_rows} and current_query() like 'COPY%' then "
            f"pg_sleep(0.2) is not null else true end /* {MARKER} */"
        },
    )


def start(wp: WarehouseProject, command: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    arguments = list(args) or ["people"]
    return subprocess.Popen(
        [sys.executable, "-m", "reverse_etl", command, *arguments, "--project-dir", str(wp.root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def copy_backend(wp: WarehouseProject, process: subprocess.Popen[str]) -> int:
    """The pid of the server backend running the diff's COPY, once its slow rows are due."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        rows = wp.rows(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY%' AND query LIKE "
            f"'%{MARKER}%' AND pid <> pg_backend_pid()"
        )
        if rows:
            time.sleep(1.0)  # well into the slow rows
            return int(rows[0][0])
        time.sleep(0.05)
    _, err = process.communicate(timeout=30)
    raise AssertionError(f"the diff's COPY never ran: {err}")


def wait_for_exit(process: subprocess.Popen[str]) -> tuple[float, str]:
    """Seconds until the process ended, and what it printed (the summary is on stdout,
    errors on stderr)."""
    began = time.monotonic()
    try:
        out, err = process.communicate(timeout=GENEROUS_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"retl still running {GENEROUS_SECONDS:g} s later: {err}") from None
    return time.monotonic() - began, out + err


def copy_still_running(wp: WarehouseProject) -> bool:
    """Whether the server still runs the COPY, a few seconds at most after retl left."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = wp.rows(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' AND query LIKE "
            f"'%{MARKER}%' AND state = 'active' AND pid <> pg_backend_pid()"
        )
        if not rows[0][0]:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("command", "fast_rows"),
    [("run", FIRST_BATCH), ("plan", FIRST_BATCH), ("run", 0)],
    ids=["run-streaming", "plan-streaming", "run-first-batch"],
)
def test_sigterm_mid_copy_of_the_diff_stops_at_once(
    wp: WarehouseProject, command: str, fast_rows: int
) -> None:
    slow_copy_sync(wp, fast_rows)
    process = start(wp, command)
    copy_backend(wp, process)

    process.send_signal(signal.SIGTERM)
    seconds, err = wait_for_exit(process)

    print(f"{command}: exited {seconds:.2f} s after SIGTERM")
    assert process.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    assert not copy_still_running(wp)
    if command == "run":
        last = wp.engine().run_log.last("people")
        assert last is not None and last.status == "interrupted"


@pytest.mark.postgres
def test_sigterm_while_parallel_runs_plan_stops_them_after_the_grace_period(
    wp: WarehouseProject,
) -> None:
    """With --threads the first signal only asks each run to stop at its safe point; a plan
    still reading the warehouse when the grace period ends is cancelled."""
    wp.sql(f"CREATE TABLE {wp.schema}.dst2 (id integer PRIMARY KEY, name text)")
    slow_copy_sync(wp, FIRST_BATCH, "people")
    slow_copy_sync(wp, FIRST_BATCH, "people2")
    document = yaml.safe_load((wp.root / "syncs" / "people2.yml").read_text())
    document["destination"]["object"] = f"{wp.schema}.dst2"
    (wp.root / "syncs" / "people2.yml").write_text(yaml.safe_dump(document))
    process = start(wp, "run", "--all", "--force", "--threads", "2")
    copy_backend(wp, process)

    process.send_signal(signal.SIGTERM)
    seconds, err = wait_for_exit(process)

    print(f"run --threads 2: exited {seconds:.2f} s after SIGTERM (grace {GRACE_SECONDS:g} s)")
    assert process.returncode == 143, err
    assert not copy_still_running(wp)
    runs = wp.engine().run_log
    for name in ("people", "people2"):
        last = runs.last(name)
        assert last is not None and last.status == "interrupted", name


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("fast_rows", "phase"),
    [(FIRST_BATCH, "COPY%"), (0, "COPY%"), (0, "WITH%")],
    ids=["streaming", "first-batch", "count-pass"],
)
def test_a_query_the_warehouse_cancels_fails_the_run_clearly(
    wp: WarehouseProject, fast_rows: int, phase: str
) -> None:
    if phase == "WITH%":  # the count pass is slow too
        wp.write_sync(
            source={
                "sql": "select g as id, 'n' || g as name from generate_series(1, 200) g where "
                f"pg_sleep(0.2) is not null /* {MARKER} */"
            }
        )
    else:
        slow_copy_sync(wp, fast_rows)
    process = start(wp, "run")
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline and process.poll() is None:
        rows = wp.rows(
            f"SELECT pid FROM pg_stat_activity WHERE query LIKE '{phase}' AND query LIKE "
            f"'%{MARKER}%' AND pid <> pg_backend_pid()"
        )
        pid = int(rows[0][0]) if rows else None
        time.sleep(0.05)
    assert pid is not None, process.communicate(timeout=30)
    time.sleep(1.0)

    wp.sql(f"SELECT pg_cancel_backend({pid})")
    seconds, err = wait_for_exit(process)

    print(f"cancelled in {phase}: exited {seconds:.2f} s after pg_cancel_backend")
    assert process.returncode == 1, err
    assert "cancelled the query (pg_cancel_backend or statement_timeout)" in err
    assert "internal error" not in err
    last = wp.engine().run_log.last("people")
    assert last is not None and last.status == "failed"
    # The lock is released and no transaction is left open: the next run goes through.
    wp.write_sync()
    wp.sql(f"INSERT INTO {wp.schema}.src VALUES (1, 'one')")
    assert wp.run().status == "success"
    assert wp.destination() == {1: "one"}


@pytest.mark.postgres
def test_the_warehouse_query_timeout_reads_as_a_cancel(wp: WarehouseProject) -> None:
    config: dict[str, Any] = yaml.safe_load((wp.root / "retl.yml").read_text())
    config["warehouses"]["wh"]["query_timeout"] = 1
    (wp.root / "retl.yml").write_text(yaml.safe_dump(config))
    slow_copy_sync(wp, 0)

    outcome = wp.run()

    assert outcome.status == "failed"
    assert "cancelled the query (pg_cancel_backend or statement_timeout)" in (outcome.error or "")
    assert "statement timeout" in (outcome.error or "")
