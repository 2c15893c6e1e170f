"""Every run tells the truth (issue 8): what a run reports is what it did, every delete obeys
the limits, and a stopped run says how far it got."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from run_harness import PostgresDb, RetlProject

TEN = [(k, f"n{k}") for k in range(1, 11)]


def set_events(project: RetlProject, rows: list[tuple[int, str, str]]) -> None:
    project.warehouse("CREATE OR REPLACE TABLE src (id INTEGER, name VARCHAR, updated_at DATE)")
    if rows:
        values = ", ".join(f"({k}, '{n}', DATE '{d}')" for k, n, d in rows)
        project.warehouse(f"INSERT INTO src VALUES {values}")


# -- 2. duplicate keys in incremental syncs ---------------------------------------------------


def test_an_incremental_run_never_sends_a_key_duplicated_in_the_whole_source(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(incremental={"column": "updated_at"}, limits={"max_row_error_ratio": 1})
    set_events(project, [(1, "a", "2024-01-01"), (2, "old copy", "2024-01-01")])
    project.run_json()
    # key 2 gains a second row above the watermark; the old copy stays below it
    set_events(
        project,
        [(1, "a", "2024-01-01"), (2, "old copy", "2024-01-01"), (2, "new copy", "2024-01-05")],
    )

    plan = project.plan_json()
    project.run_json()

    assert plan["counts"]["update"] == 0
    assert plan["counts"]["error"] >= 1
    assert any("duplicate primary key id = 2 in" in e["message"] for e in plan["row_errors"])
    assert pg.rows() == [(1, "a"), (2, "old copy")]


# -- 4. every delete obeys the limits, also over a window -------------------------------------


def test_mode_delete_obeys_max_delete_ratio_over_the_destinations_records(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"INSERT INTO {pg.schema}.contacts SELECT k, 'n' || k FROM generate_series(1, 20) k")
    project.write_sync(
        mode="delete",
        allow_destructive=True,
        mapping={"id": "id"},
        limits={"max_delete_ratio": 0.1},
    )
    project.set_source([(k, "x") for k in range(1, 21)])  # every row

    run = project.run_json(code=1)

    assert run["status"] == "refused"
    assert "deletes 20 of 20 records" in run["error"]
    assert "max_delete_ratio = 0.1" in run["error"]
    assert pg.count() == 20


def test_deletes_obey_a_default_max_deletes(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync(mode="delete", allow_destructive=True, mapping={"id": "id"})
    project.warehouse(
        "CREATE OR REPLACE TABLE src AS SELECT i AS id, 'x' AS name FROM range(1, 10002) t(i)"
    )

    plan = project.plan_json()

    assert "above limits.max_deletes = 10,000" in plan["refused"]


def test_repeated_deletes_cannot_erode_a_table_within_the_window(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(on_removed="delete", allow_destructive=True)  # ratio 0.5, window 24h
    rows = [(k, f"n{k}") for k in range(1, 17)]
    project.set_source(rows)
    project.run_json()

    project.set_source(rows[:8])  # 8 of 16 removed: 50%, allowed
    first = project.run_json()
    project.set_source(rows[:4])  # 4 more: 12 of 16 in 24h
    second = project.run_json(code=1)

    assert first["status"] == "success" and first["counts"]["delete"] == 8
    assert second["status"] == "refused"
    assert "and 8 in the last 24h" in second["error"]
    assert pg.count() == 8


# -- 5. the error ratio is over the records a run sent ----------------------------------------


def test_rejections_count_against_the_records_sent_not_the_unchanged_ones(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(
        f"ALTER TABLE {pg.schema}.contacts ADD CONSTRAINT short_name CHECK (length(name) < 5)"
    )
    project.write_sync()
    project.warehouse(
        "CREATE OR REPLACE TABLE src AS SELECT i::INTEGER AS id, 'ok' AS name FROM range(1, 1001) t(i)"
    )
    project.run_json()
    project.set_source(
        [(k, "ok") for k in range(1, 998)]
        + [(k, "far too long") for k in range(998, 1001)]
        + [(k, "ok") for k in range(1001, 1003)]
    )

    run = project.run_json(code=1)

    assert run["status"] == "failed"
    assert run["counts"]["rejected"] == 3
    assert "3 of 5 records to send were newly rejected" in run["error"]


def test_max_rejected_is_an_absolute_cap(project: RetlProject, pg: PostgresDb) -> None:
    pg.execute(
        f"ALTER TABLE {pg.schema}.contacts ADD CONSTRAINT short_name CHECK (length(name) < 5)"
    )
    project.write_sync(limits={"max_row_error_ratio": 1, "max_rejected": 1})
    project.set_source([(1, "ok"), (2, "far too long"), (3, "far too long")])

    run = project.run_json(code=1)

    assert run["status"] == "failed" and "limits.max_rejected = 1" in run["error"]


# -- 11. planned and applied counts kept apart --------------------------------------------------


def test_a_refused_run_applies_nothing_and_says_what_was_planned(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(on_removed="delete", allow_destructive=True, limits={"max_deletes": 1})
    project.set_source(TEN)
    project.run_json()
    project.set_source(TEN[:5])

    run = project.run_json(code=1)
    (logged, *_) = project.runs()

    assert run["counts"]["delete"] == 0 and run["planned"]["delete"] == 5
    assert logged["status"] == "refused"
    assert logged["counts"].get("delete", 0) == 0


# -- 14. --force ignores schedules, not failures; plan says paused ----------------------------


def test_run_all_force_skips_a_sync_whose_dependency_failed(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.set_source(TEN)
    project.write_sync("first", destination={"name": "pg", "object": f"{pg.schema}.missing"})
    project.write_sync("second", schedule={"after": ["first"]})

    result = project.cli("run", "--all", "--force", "--json")

    runs = {r["sync"]: r for r in result.json()["runs"]}
    assert result.code == 1
    assert runs["first"]["status"] == "failed"
    assert runs["second"]["status"] == "skipped"
    assert "first did not succeed" in runs["second"]["error"]
    assert pg.count() == 0


def test_plan_says_a_sync_is_paused(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync(paused=True)
    project.set_source(TEN)

    human = project.cli("plan", "contacts")
    machine = project.plan_json()

    assert "paused" in human.out
    assert machine["paused"] is True


# -- 10. SIGTERM and SIGINT stop a run cleanly --------------------------------------------------


def _start_run(project: RetlProject, pg: PostgresDb) -> subprocess.Popen[str]:
    """`retl run contacts` of 200,000 rows in batches of 500, as a separate process."""
    project.write_sync(batch_size=500)
    project.warehouse(
        "CREATE OR REPLACE TABLE src AS SELECT i AS id, 'n' || i AS name FROM range(1, 200001) t(i)"
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reverse_etl",
            "run",
            "contacts",
            "--project-dir",
            str(project.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PG_URL": pg.url},
    )


def _stop_mid_run(
    project: RetlProject, pg: PostgresDb, signum: int
) -> subprocess.CompletedProcess[str]:
    process = _start_run(project, pg)
    deadline = time.monotonic() + 60
    while pg.count() == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigterm_stops_cleanly_records_interrupted_and_keeps_what_was_acknowledged(
    project: RetlProject, pg: PostgresDb
) -> None:
    done = _stop_mid_run(project, pg, signal.SIGTERM)

    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert "interrupted:" in done.stdout and "sent and saved; run again to continue" in done.stdout
    (run, *_) = project.runs()
    assert run["status"] == "interrupted"
    delivered = pg.count()
    assert 0 < delivered < 200_000
    # every acknowledged key is really in the destination, and the next run finishes the job
    assert len(project.state_keys()) <= delivered
    finished = project.run_json()
    assert finished["status"] == "success"
    assert pg.count() == 200_000


def test_a_run_killed_with_sigkill_keeps_the_counts_it_had_recorded(
    project: RetlProject, pg: PostgresDb
) -> None:
    process = _start_run(project, pg)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        runs = project.runs()
        if runs and runs[0]["counts"].get("create", 0) > 0:
            break
        time.sleep(0.2)
    process.kill()
    process.communicate(timeout=30)

    (killed, *_) = project.runs()
    # Not `create 0`: what the destination had acknowledged when the run last recorded it.
    assert 0 < killed["counts"]["create"] <= pg.count() < 200_000
    finished = project.run_json()
    assert finished["status"] == "success"
    assert pg.count() == 200_000
    (_, abandoned, *_) = project.runs()
    assert abandoned["id"] == killed["id"] and abandoned["counts"]["create"] > 0


def test_sigint_stops_cleanly_with_exit_130(project: RetlProject, pg: PostgresDb) -> None:
    done = _stop_mid_run(project, pg, signal.SIGINT)

    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert "interrupted" in done.stdout
    assert project.runs()[0]["status"] == "interrupted"


def test_a_delete_of_records_already_gone_is_not_reported_as_deleted(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"INSERT INTO {pg.schema}.contacts VALUES (1, 'n1'), (2, 'n2')")
    project.write_sync(
        mode="delete", allow_destructive=True, mapping={"id": "id"}, limits={"max_delete_ratio": 1}
    )
    project.warehouse(
        "CREATE OR REPLACE TABLE src AS SELECT i::INTEGER AS id, 'x' AS name FROM range(1, 1001) t(i)"
    )

    run = project.run_json()

    assert run["planned"]["delete"] == 1000
    assert run["counts"]["delete"] == 2
    assert run["counts"]["absent"] == 998
    assert pg.count() == 0


# -- 13. a broken sync file stops only that sync under run --all ------------------------------


def test_run_all_runs_the_valid_syncs_when_one_sync_file_is_broken(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.set_source(TEN)
    project.write_sync("good", schedule="*/5 * * * *")
    project.write_sync("broken", mode="sideways", schedule="*/5 * * * *")
    project.write_sync("after_broken", schedule={"after": ["broken"]})

    result = project.cli("run", "--all", "--json")

    runs = {r["sync"]: r for r in result.json()["runs"]}
    assert result.code == 1
    assert runs["good"]["status"] == "success" and pg.count() == 10
    assert runs["broken"]["status"] == "failed" and "retl validate broken" in runs["broken"]["hint"]
    assert runs["after_broken"]["status"] == "skipped"


# -- 1. state written with retl 0.1's hash migrates without re-sending ------------------------


def test_state_holding_the_old_hash_migrates_without_resending_unchanged_rows(
    project: RetlProject, pg: PostgresDb
) -> None:
    import duckdb

    from reverse_etl.config import load_project
    from reverse_etl.mapping import compile_mapping

    project.write_sync()
    project.set_source(TEN)
    project.run_json()
    sync = load_project(project.root).syncs["contacts"]
    assert sync.config is not None
    legacy = compile_mapping(sync.config, "id").legacy_hash_expression("s")
    con = duckdb.connect(str(project.state_dir / "contacts.duckdb"))
    try:  # what retl 0.1 stored for the same rows
        con.execute(f"ATTACH '{project.warehouse_path}' AS wh (READ_ONLY)")
        con.execute(
            f"UPDATE snapshot SET hash = (SELECT {legacy} FROM wh.src s "
            "WHERE CAST(s.id AS VARCHAR) = snapshot.key)"
        )
        old = dict(con.execute("SELECT key, hash FROM snapshot").fetchall())
    finally:
        con.close()
    project.set_source([(1, "changed"), *TEN[1:]])

    plan = project.plan_json()
    run = project.run_json()

    assert (plan["counts"]["update"], plan["counts"]["unchanged"]) == (1, 9)
    assert run["counts"]["update"] == 1
    con = duckdb.connect(str(project.state_dir / "contacts.duckdb"), read_only=True)
    try:
        new = dict(con.execute("SELECT key, hash FROM snapshot").fetchall())
    finally:
        con.close()
    assert all(new[k] != old[k] for k in old)  # every record now holds the new hash
    assert project.plan_json()["counts"]["unchanged"] == 10


def test_a_signal_while_retl_starts_up_prints_no_traceback(project: RetlProject) -> None:
    """Ctrl-C (SIGINT) at any moment of start-up: retl says so in one line and exits 130 (or
    had already finished); never a KeyboardInterrupt traceback."""
    project.write_sync()
    project.set_source(TEN)
    for delay in (0.1, 0.15, 0.2, 0.3, 0.4, 0.6):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reverse_etl",
                "plan",
                "contacts",
                "--project-dir",
                str(project.root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if "init_import_site" in err:
            continue  # the signal came while Python itself started, before any line of retl
        assert "Traceback" not in err, err
        assert process.returncode in (130, 0), (process.returncode, err)
