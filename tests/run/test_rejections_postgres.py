"""Records the destination rejects (a CHECK constraint on PostgreSQL): dead-lettered with the
database's message, never acknowledged in state, retried until they are delivered, and failing
the run above limits.max_row_error_ratio."""

from __future__ import annotations

import pytest
from run_harness import PostgresDb, RetlProject

pytestmark = pytest.mark.postgres

ROWS = 1000
BAD = {k for k in range(1, ROWS + 1) if k % 20 == 0}  # 50 keys


@pytest.fixture
def checked(project: RetlProject, pg: PostgresDb) -> RetlProject:
    """A destination that refuses names starting with 'bad', and a source with 50 of them."""
    pg.execute(
        f"ALTER TABLE {pg.schema}.contacts ADD CONSTRAINT no_bad CHECK (name NOT LIKE 'bad%')"
    )
    project.warehouse(
        "CREATE OR REPLACE TABLE src AS SELECT i::INTEGER AS id, "
        f"CASE WHEN i % 20 = 0 THEN 'bad ' ELSE 'good ' END || i AS name FROM range(1, {ROWS + 1}) t(i)"
    )
    return project


def test_rejected_rows_go_to_the_dead_letter_queue_and_the_others_are_delivered(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.write_sync(limits={"max_row_error_ratio": 0.1})

    run = checked.run_json()

    assert run["status"] == "success"
    assert run["counts"]["create"] == ROWS - len(BAD)
    assert run["counts"]["rejected"] == len(BAD)
    assert pg.rows() == [(k, f"good {k}") for k in range(1, ROWS + 1) if k not in BAD]
    letters = checked.dead_letters()
    assert {int(d["key"]) for d in letters} == BAD
    for letter in letters:
        assert 'violates check constraint "no_bad"' in letter["error"]
        assert letter["operation"] == "create"
        assert letter["record"] == {"id": int(letter["key"]), "name": f"bad {letter['key']}"}
    status = checked.cli("status", "--json").json()["syncs"][0]
    assert status["dead_letters"] == len(BAD)


def test_state_does_not_advance_for_rejected_rows(checked: RetlProject, pg: PostgresDb) -> None:
    checked.write_sync(limits={"max_row_error_ratio": 1})
    checked.run_json()

    assert checked.state_keys() == {str(k) for k in range(1, ROWS + 1) if k not in BAD}
    plan = checked.plan_json()
    assert plan["counts"]["create"] == len(BAD)
    assert plan["counts"]["unchanged"] == ROWS - len(BAD)
    again = checked.run_json()
    assert again["counts"]["rejected"] == len(BAD)
    assert {d["attempts"] for d in checked.dead_letters()} == {2}
    assert checked.plan_counts()["create"] == len(BAD)


def test_after_the_source_is_fixed_the_next_run_delivers_them_and_empties_the_queue(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.write_sync()
    checked.run_json()
    checked.warehouse("UPDATE src SET name = 'fixed ' || id WHERE name LIKE 'bad%'")

    run = checked.run_json()

    assert run["status"] == "success"
    assert run["counts"]["create"] == len(BAD)
    assert run["counts"]["rejected"] == 0
    assert checked.dead_letters() == []
    expected = [(k, f"fixed {k}" if k in BAD else f"good {k}") for k in range(1, ROWS + 1)]
    assert pg.rows() == expected
    assert checked.state_keys() == {str(k) for k in range(1, ROWS + 1)}
    assert checked.cli("status", "--json").json()["syncs"][0]["dead_letters"] == 0


def test_a_rejected_update_keeps_the_old_record_and_is_planned_again(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.warehouse("UPDATE src SET name = 'good ' || id")
    checked.write_sync()
    checked.run_json()
    checked.warehouse(
        "UPDATE src SET name = 'changed ' || id WHERE id <= 100",
        "UPDATE src SET name = 'bad again ' || id WHERE id <= 10",
    )

    run = checked.run_json()

    assert run["status"] == "success"  # 10 of the 100 sent: not above the default ratio 0.1
    assert run["counts"]["update"] == 90
    assert run["counts"]["rejected"] == 10
    assert pg.rows()[:11] == [(k, f"good {k}") for k in range(1, 11)] + [(11, "changed 11")]
    assert {d["operation"] for d in checked.dead_letters()} == {"update"}
    assert checked.plan_counts()["update"] == 10


def test_more_rejections_than_max_row_error_ratio_fail_the_run_and_stop_it(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.write_sync(batch_size=100, limits={"max_row_error_ratio": 0.01})

    result = checked.cli("run", "contacts", "--json")

    assert result.code == 1
    (run,) = result.json()["runs"]
    assert run["status"] == "failed"
    assert "max_row_error_ratio" in run["error"]
    # It stopped once 10 (1% of 1,000) were exceeded: the later batches were never sent.
    assert run["counts"]["rejected"] < len(BAD)
    assert pg.count() == run["counts"]["create"] < ROWS - len(BAD)
    (logged,) = checked.runs()
    assert logged["status"] == "failed"
    assert "max_row_error_ratio" in logged["error"]


def test_dlq_retry_resends_only_the_dead_letters(checked: RetlProject, pg: PostgresDb) -> None:
    checked.write_sync()
    checked.run_json()
    checked.warehouse(
        "UPDATE src SET name = 'fixed ' || id WHERE name LIKE 'bad%'",
        "UPDATE src SET name = 'changed 1' WHERE id = 1",
    )

    result = checked.cli("dlq", "retry", "contacts", "--json")

    assert result.code == 0, result.output
    (run,) = result.json()["runs"]
    assert run["status"] == "success"
    assert run["counts"]["create"] == len(BAD)
    assert run["counts"]["update"] == 0
    assert checked.dead_letters() == []
    assert pg.rows()[0] == (1, "good 1")  # not a dead letter: left for the next run
    assert checked.plan_counts()["update"] == 1


def test_a_dead_letter_is_retried_by_the_next_run_even_if_its_row_went_back_to_the_delivered_value(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.warehouse("UPDATE src SET name = 'good ' || id")
    checked.write_sync()
    checked.run_json()
    checked.warehouse("UPDATE src SET name = 'bad 1' WHERE id = 1")
    checked.cli("run", "contacts")
    assert [d["key"] for d in checked.dead_letters()] == ["1"]
    checked.warehouse("UPDATE src SET name = 'good 1' WHERE id = 1")

    run = checked.run_json()

    # SPEC §4: dead letters are "retried automatically on the next run".
    assert run["counts"]["update"] == 1
    assert checked.dead_letters() == []


def test_a_dead_letter_whose_row_left_the_source_is_forgotten(
    checked: RetlProject, pg: PostgresDb
) -> None:
    checked.write_sync(limits={"max_row_error_ratio": 0.1})
    checked.run_json()
    assert len(checked.dead_letters()) == len(BAD)

    checked.warehouse("DELETE FROM src WHERE name LIKE 'bad%'")
    run = checked.run_json()

    assert run["status"] == "success"
    assert run["counts"]["rejected"] == 0
    assert checked.dead_letters() == []
