"""The main cells of the sync mode table (SPEC §3) on MariaDB, through the `sql` destination.

As on PostgreSQL: a first run, then a source with key 2 changed, key 3 removed, key 4 unchanged
(edited by hand in the destination, so that re-sending it would show) and key 5 new.
"""

from __future__ import annotations

from typing import Any

import pytest
from run_harness import MariaDb, RetlProject

pytestmark = pytest.mark.mysql

FIRST = [(2, "a2"), (3, "a3"), (4, "a4")]
SECOND = [(2, "b2"), (4, "a4"), (5, "a5")]


def two_runs(
    project: RetlProject, maria: MariaDb, before: list[tuple[int, str]] | None = None
) -> dict[str, int]:
    table = project.default_object
    if before:
        maria.execute(
            f"INSERT INTO {table} VALUES " + ", ".join(f"({k}, '{v}')" for k, v in before)
        )
    project.set_source(FIRST)
    first = project.run_json()
    assert first["counts"]["rejected"] == 0
    maria.execute(f"UPDATE {table} SET name = 'edited' WHERE id = 4")
    project.set_source(SECOND)
    counts = project.plan_counts()
    run = project.run_json()
    assert run["status"] == "success"
    assert run["counts"]["rejected"] == 0
    return {k: counts[k] for k in ("create", "update", "delete", "unchanged", "ignored")}


@pytest.mark.parametrize(
    ("mode", "on_removed", "before", "plan", "destination"),
    [
        (
            "insert",
            "ignore",
            [],
            {"create": 1, "update": 0, "delete": 0, "unchanged": 1, "ignored": 1},
            [(2, "a2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "insert",
            "delete",
            [],
            {"create": 1, "update": 0, "delete": 1, "unchanged": 1, "ignored": 1},
            [(2, "a2"), (4, "edited"), (5, "a5")],
        ),
        (
            "upsert",
            "ignore",
            [],
            {"create": 1, "update": 1, "delete": 0, "unchanged": 1, "ignored": 0},
            [(2, "b2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "upsert",
            "delete",
            [],
            {"create": 1, "update": 1, "delete": 1, "unchanged": 1, "ignored": 0},
            [(2, "b2"), (4, "edited"), (5, "a5")],
        ),
        (
            # Key 2 already holds exactly the first run's value: still found, not rejected.
            "update",
            "ignore",
            [(1, "old1"), (2, "a2"), (3, "old3"), (4, "old4"), (5, "old5")],
            {"create": 0, "update": 2, "delete": 0, "unchanged": 1, "ignored": 0},
            [(1, "old1"), (2, "b2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "update",
            "delete",
            [(1, "old1"), (2, "old2"), (3, "old3"), (4, "old4"), (5, "old5")],
            {"create": 0, "update": 2, "delete": 1, "unchanged": 1, "ignored": 0},
            [(1, "old1"), (2, "b2"), (4, "edited"), (5, "a5")],
        ),
    ],
)
def test_mode_cells(
    maria_project: RetlProject,
    maria: MariaDb,
    mode: str,
    on_removed: str,
    before: list[tuple[int, str]],
    plan: dict[str, int],
    destination: list[tuple[Any, ...]],
) -> None:
    maria_project.write_sync(mode=mode, on_removed=on_removed, allow_destructive=True)

    counts = two_runs(maria_project, maria, before)

    assert counts == plan
    assert maria.rows(maria_project.default_object) == destination


def test_delete_mode(maria_project: RetlProject, maria: MariaDb) -> None:
    table = maria_project.default_object
    maria_project.write_sync(mode="delete", allow_destructive=True, mapping={"id": "id"})
    maria.execute(f"INSERT INTO {table} VALUES " + ", ".join(f"({k}, 'x')" for k in range(1, 10)))
    maria_project.set_source(FIRST)

    run = maria_project.run_json()

    assert run["counts"]["delete"] == 3
    assert [r[0] for r in maria.rows(table)] == [1, 5, 6, 7, 8, 9]
    maria.execute(f"INSERT INTO {table} VALUES (4, 'back')")
    maria_project.set_source(SECOND)
    assert maria_project.run_json()["counts"]["delete"] == 1
    assert [r[0] for r in maria.rows(table)] == [1, 4, 6, 7, 8, 9]


def test_update_mode_never_creates(maria_project: RetlProject, maria: MariaDb) -> None:
    table = maria_project.default_object
    maria_project.write_sync(mode="update", limits={"max_row_error_ratio": 0.5})
    maria.execute(f"INSERT INTO {table} VALUES " + ", ".join(f"({k}, 'old')" for k in range(1, 10)))
    maria_project.set_source([(k, f"new{k}") for k in range(1, 11)])

    run = maria_project.run_json()

    assert run["counts"]["update"] == 9
    assert run["counts"]["rejected"] == 1
    assert maria.rows(table) == [(k, f"new{k}") for k in range(1, 10)]
    (letter,) = maria_project.dead_letters()
    assert letter["key"] == "10"
    assert "no record with id" in letter["error"]
    assert maria_project.plan_counts()["update"] == 1


def test_rejected_rows_carry_the_database_message_and_are_retried(
    maria_project: RetlProject, maria: MariaDb
) -> None:
    table = maria_project.default_object
    maria.execute(f"ALTER TABLE {table} ADD CONSTRAINT no_bad CHECK (name NOT LIKE 'bad%')")
    maria_project.write_sync()
    rows = [(k, f"bad {k}" if k % 10 == 0 else f"good {k}") for k in range(1, 101)]
    maria_project.set_source(rows)

    run = maria_project.run_json()

    assert run["status"] == "success"
    assert (run["counts"]["create"], run["counts"]["rejected"]) == (90, 10)
    letters = maria_project.dead_letters()
    assert {int(d["key"]) for d in letters} == set(range(10, 101, 10))
    assert all("no_bad" in d["error"] for d in letters), letters[0]["error"]
    assert maria_project.plan_counts()["create"] == 10

    maria_project.warehouse("UPDATE src SET name = 'fixed ' || id WHERE name LIKE 'bad%'")
    assert maria_project.run_json()["counts"]["create"] == 10
    assert maria_project.dead_letters() == []
    assert len(maria.rows(table)) == 100
