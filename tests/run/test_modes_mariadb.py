"""The main cells of the sync mode table (SPEC §3) on MariaDB, through the `sql` destination.

As on PostgreSQL: a first run, then a source with key 2 changed, key 3 removed, key 4 unchanged
(edited by hand in the destination, so that re-sending it would show) and key 5 new.
"""

from __future__ import annotations

from decimal import Decimal
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


# -- nothing arrives altered, no two keys hit one record (issue 15) ------------------------------


def test_values_the_columns_would_alter_are_dead_letters_and_never_stored(
    maria_project: RetlProject, maria: MariaDb
) -> None:
    table = maria.table("prices")
    maria.execute(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, price DECIMAL(10,2), qty INT, day DATE, "
        "stamp DATETIME, code VARCHAR(4))"
    )
    maria_project.warehouse(
        "CREATE TABLE prices AS SELECT * FROM (VALUES "
        "(1, 12.5000::DECIMAL(18,4), 1.0::DOUBLE, TIMESTAMP '2024-01-02', "
        " TIMESTAMP '2024-01-02 03:04:05', 'ok'), "
        "(2, 1234.5678, 1.0, TIMESTAMP '2024-01-02', TIMESTAMP '2024-01-02 03:04:05', 'ok'), "
        "(3, 1.0, 1.5, TIMESTAMP '2024-01-02', TIMESTAMP '2024-01-02 03:04:05', 'ok'), "
        "(4, 1.0, 1.0, TIMESTAMP '2024-01-02 10:30:00', TIMESTAMP '2024-01-02 03:04:05', 'ok'), "
        "(5, 1.0, 1.0, TIMESTAMP '2024-01-02', TIMESTAMP '2024-01-02 03:04:05.25', 'ok'), "
        "(6, 1.0, 1.0, TIMESTAMP '2024-01-02', TIMESTAMP '2024-01-02 03:04:05', 'ab   ')"
        ") AS t(id, price, qty, day, stamp, code)"
    )
    maria_project.write_sync(
        destination={"name": "maria", "object": table},
        limits={"max_row_error_ratio": 1, "max_delete_ratio": 1},
        source={"sql": "select * from prices"},
        mapping={f: f for f in ("id", "price", "qty", "day", "stamp", "code")},
    )

    run = maria_project.run_json()

    assert run["counts"]["rejected"] == 5
    letters = {d["key"]: d["error"] for d in maria_project.dead_letters()}
    assert letters == {
        "2": "price = 1234.5678 would be stored as 1234.57 in decimal(10,2): widen the column "
        "or round in the SQL",
        "3": "qty = 1.5 would be stored as 2 in int(11): widen the column or round in the SQL",
        "4": "day = 2024-01-02 10:30:00 would be stored as 2024-01-02 in date (its time of day "
        "is lost): make the column a timestamp or cast to a date in the SQL",
        "5": "stamp = 2024-01-02 03:04:05.250000 would be stored as 2024-01-02 03:04:05 in "
        "datetime (it keeps 0 fractional digits of a second): give the column more fractional "
        "digits or truncate in the SQL",
        "6": "code = 'ab   ' is 5 characters long, more than the 4 of varchar(4): it would be "
        "stored without its trailing spaces: widen the column or shorten the value in the SQL",
    }
    assert [r[:3] for r in maria.rows(table)] == [(1, Decimal("12.50"), 1)]


def keyed(maria_project: RetlProject, maria: MariaDb, mode: str, keys: list[str]) -> str:
    """A sync of text keys into a VARCHAR key column of the server's default collation
    (utf8mb4_general_ci or latin1_swedish_ci: case-insensitive, PAD SPACE)."""
    table = maria.table("keyed")
    maria.execute(f"CREATE TABLE IF NOT EXISTS {table} (k VARCHAR(20) PRIMARY KEY, v VARCHAR(20))")
    values = ", ".join(f"('{k}', 'new {k.strip()}')" for k in keys)
    maria_project.warehouse(
        f"CREATE OR REPLACE TABLE keys AS SELECT * FROM (VALUES {values}) t(k, v)"
    )
    mapping = {"k": "k"} if mode == "delete" else {"k": "k", "v": "v"}
    maria_project.write_sync(
        destination={"name": "maria", "object": table},
        limits={"max_row_error_ratio": 1, "max_delete_ratio": 1},
        source={"sql": "select * from keys"},
        mode=mode,
        primary_key="k",
        mapping=mapping,
        **({"allow_destructive": True} if mode == "delete" else {}),
    )
    return table


def test_keys_one_record_under_the_collation_are_rejected_not_merged(
    maria_project: RetlProject, maria: MariaDb
) -> None:
    keys = ["abc", "ABC", "x", "x ", "p", "q", "r", "s"]
    table = keyed(maria_project, maria, "upsert", keys)

    run = maria_project.run_json()

    assert run["counts"]["rejected"] == 4
    letters = {d["key"]: d["error"] for d in maria_project.dead_letters()}
    assert set(letters) == {"abc", "ABC", "x", "x "}
    assert letters["ABC"].startswith(
        "key 'ABC' is the same record as 'abc' under utf8mb4_general_ci (case- and "
        "trailing-space-insensitive)"
    ) or letters["ABC"].startswith("key 'ABC' is the same record as 'abc' under latin1")
    assert maria.rows(table) == [(k, f"new {k}") for k in ("p", "q", "r", "s")]


def test_a_delete_or_update_matching_a_record_only_by_collation_leaves_it_alone(
    maria_project: RetlProject, maria: MariaDb
) -> None:
    table = keyed(maria_project, maria, "delete", ["ABC", "x ", "gone"])
    maria.execute(f"INSERT INTO {table} VALUES ('abc', 'live'), ('x', 'live'), ('gone', 'old')")

    run = maria_project.run_json()

    assert run["counts"]["delete"] == 1
    letters = {d["key"]: d["error"] for d in maria_project.dead_letters()}
    assert set(letters) == {"ABC", "x "}
    assert "would change the record 'abc'" in letters["ABC"]
    assert maria.rows(table) == [("abc", "live"), ("x", "live")]

    keyed(maria_project, maria, "upsert", ["ABC", "x"])
    maria_project.run_json()
    assert maria.rows(table) == [("abc", "live"), ("x", "new x")]
