"""retl refreshes the planner statistics of the tables it bulk-changes (issue 16): a
never-analyzed snapshot after a big churn made the next diff's anti-join a nested loop, and
temporary stage tables are never analyzed by autovacuum. Real PostgreSQL; no timing."""

from __future__ import annotations

import time

import pytest
from test_warehouse_backend import WarehouseProject, fill

from reverse_etl.destinations.postgres import ANALYZE_STAGE_ROWS
from reverse_etl.state.warehouse import ANALYZE_MIN_ROWS


def manual_analyzes(wp: WarehouseProject, schema: str, table: str) -> int:
    """ANALYZE statements run on a table (not autovacuum's), as the statistics report them."""
    deadline = time.monotonic() + 10  # a backend reports its counters shortly after it ran
    count = 0
    while time.monotonic() < deadline:
        rows = wp.rows(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE schemaname = "
            f"'{schema}' AND relname = '{table}'"
        )
        count = int(rows[0][0]) if rows else 0
        if count:
            return count
        time.sleep(0.2)
    return count


def estimated_rows(wp: WarehouseProject, relation: str) -> int:
    return int(wp.rows(f"SELECT reltuples FROM pg_class WHERE oid = '{relation}'::regclass")[0][0])


@pytest.mark.postgres
def test_a_bulk_load_of_the_snapshot_is_analyzed(wp: WarehouseProject) -> None:
    wp.write_sync(batch_size=1_000)
    fill(wp, 3 * ANALYZE_MIN_ROWS)

    outcome = wp.run()

    assert outcome.status == "success", outcome.error
    assert manual_analyzes(wp, wp.state_schema, "retl_snapshot") >= 1
    # The planner knows the snapshot's size (-1: never analyzed).
    assert estimated_rows(wp, f"{wp.state_schema}.retl_snapshot") >= 2 * ANALYZE_MIN_ROWS


@pytest.mark.postgres
def test_a_run_that_changes_few_rows_does_not_analyze(wp: WarehouseProject) -> None:
    wp.write_sync()
    fill(wp, 10)

    assert wp.run().status == "success"

    assert estimated_rows(wp, f"{wp.state_schema}.retl_snapshot") == -1


@pytest.mark.postgres
def test_a_large_destination_stage_is_analyzed_before_the_merge(wp: WarehouseProject) -> None:
    """A statement trigger on the destination sees the stage the merge reads: its row
    estimate is the stage's size, not 'never analyzed'."""
    rows = ANALYZE_STAGE_ROWS + 10
    wp.write_sync(batch_size=rows)
    fill(wp, rows)
    assert wp.run().status == "success"  # a first load: COPY straight into the table
    wp.sql(
        f"CREATE TABLE {wp.schema}.seen (estimate real)",
        f"""CREATE FUNCTION {wp.schema}.seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            INSERT INTO {wp.schema}.seen SELECT reltuples FROM pg_class
            WHERE relname = '_retl_stage' AND relpersistence = 't' AND pg_table_is_visible(oid);
            RETURN NULL; END $$""",
        f"CREATE TRIGGER seen AFTER UPDATE ON {wp.schema}.dst FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {wp.schema}.seen()",
        f"UPDATE {wp.schema}.src SET name = name || '!'",
    )

    outcome = wp.run()

    assert outcome.status == "success", outcome.error
    assert outcome.counts["update"] == rows
    assert [r[0] for r in wp.rows(f"SELECT estimate FROM {wp.schema}.seen")] == [rows]


@pytest.mark.postgres
def test_a_large_acknowledgement_stage_is_analyzed_before_the_merge(
    wp: WarehouseProject,
) -> None:
    rows = ANALYZE_STAGE_ROWS + 10
    wp.write_sync(batch_size=rows)
    fill(wp, rows)
    assert wp.run().status == "success"
    state = wp.state_schema
    wp.sql(
        f"CREATE TABLE {wp.schema}.seen (estimate real)",
        f"""CREATE FUNCTION {wp.schema}.seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            INSERT INTO {wp.schema}.seen SELECT reltuples FROM pg_class
            WHERE relname = 'retl_ack_stage' AND relpersistence = 't'
            AND pg_table_is_visible(oid);
            RETURN NULL; END $$""",
        f"CREATE TRIGGER seen AFTER UPDATE ON {state}.retl_snapshot FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {wp.schema}.seen()",
        f"UPDATE {wp.schema}.src SET name = name || '!'",
    )

    outcome = wp.run()

    assert outcome.status == "success", outcome.error
    assert [r[0] for r in wp.rows(f"SELECT estimate FROM {wp.schema}.seen")] == [rows]
