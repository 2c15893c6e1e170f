"""Every cell of the sync mode table (SPEC §3) on a real PostgreSQL destination.

Each scenario runs once, then changes the source so that it holds one row of each kind:
key 2 changed, key 3 removed, key 4 unchanged (but edited by hand in the destination, so that
re-sending it would show) and key 5 new. The second run's plan counts and the destination's
contents afterwards are the table's cells.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest
from run_harness import PostgresDb, RetlProject

from reverse_etl.types import TargetId

pytestmark = pytest.mark.postgres

FIRST = [(2, "a2"), (3, "a3"), (4, "a4")]
SECOND = [(2, "b2"), (4, "a4"), (5, "a5")]  # 2 changed, 3 removed, 4 unchanged, 5 new


def two_runs(
    project: RetlProject, pg: PostgresDb, before: list[tuple[int, str]] | None = None
) -> dict[str, int]:
    """Run with FIRST, hand-edit key 4 in the destination, switch to SECOND; returns the plan
    counts of the second run after running it."""
    if before:
        pg.execute(
            f"INSERT INTO {pg.schema}.contacts VALUES "
            + ", ".join(f"({k}, '{v}')" for k, v in before)
        )
    project.set_source(FIRST)
    project.run_json()
    pg.execute(f"UPDATE {pg.schema}.contacts SET name = 'edited' WHERE id = 4")
    project.set_source(SECOND)
    counts = project.plan_counts()
    run = project.run_json()
    assert run["status"] == "success"
    return counts


def sent(counts: dict[str, int]) -> dict[str, int]:
    return {k: counts[k] for k in ("create", "update", "delete", "unchanged", "ignored", "error")}


@pytest.mark.parametrize(
    ("mode", "on_removed", "plan", "destination"),
    [
        # insert: new -> create; changed, unchanged -> nothing; removed -> on_removed
        (
            "insert",
            "ignore",
            {"create": 1, "update": 0, "delete": 0, "unchanged": 1, "ignored": 1, "error": 0},
            [(2, "a2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "insert",
            "delete",
            {"create": 1, "update": 0, "delete": 1, "unchanged": 1, "ignored": 1, "error": 0},
            [(2, "a2"), (4, "edited"), (5, "a5")],
        ),
        # upsert: new -> create (upsert); changed -> update (upsert); removed -> on_removed
        (
            "upsert",
            "ignore",
            {"create": 1, "update": 1, "delete": 0, "unchanged": 1, "ignored": 0, "error": 0},
            [(2, "b2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "upsert",
            "delete",
            {"create": 1, "update": 1, "delete": 1, "unchanged": 1, "ignored": 0, "error": 0},
            [(2, "b2"), (4, "edited"), (5, "a5")],
        ),
    ],
)
def test_insert_and_upsert_cells(
    project: RetlProject,
    pg: PostgresDb,
    mode: str,
    on_removed: str,
    plan: dict[str, int],
    destination: list[tuple[Any, ...]],
) -> None:
    project.write_sync(mode=mode, on_removed=on_removed, allow_destructive=True)

    counts = two_runs(project, pg)

    assert sent(counts) == plan
    assert pg.rows() == destination


@pytest.mark.parametrize(
    ("on_removed", "plan", "destination"),
    [
        (
            "ignore",
            {"create": 0, "update": 2, "delete": 0, "unchanged": 1, "ignored": 0, "error": 0},
            [(1, "old1"), (2, "b2"), (3, "a3"), (4, "edited"), (5, "a5")],
        ),
        (
            "delete",
            {"create": 0, "update": 2, "delete": 1, "unchanged": 1, "ignored": 0, "error": 0},
            [(1, "old1"), (2, "b2"), (4, "edited"), (5, "a5")],
        ),
    ],
)
def test_update_cells(
    project: RetlProject,
    pg: PostgresDb,
    on_removed: str,
    plan: dict[str, int],
    destination: list[tuple[Any, ...]],
) -> None:
    """update: new -> update (the record exists in the destination); changed -> update."""
    project.write_sync(mode="update", on_removed=on_removed, allow_destructive=True)
    existing = [(k, f"old{k}") for k in range(1, 6)]

    counts = two_runs(project, pg, before=existing)

    assert sent(counts) == plan
    assert pg.rows() == destination


def test_delete_mode_deletes_each_new_row_once_and_ignores_changed_and_removed_rows(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(mode="delete", allow_destructive=True, mapping={"id": "id"})
    pg.execute(f"INSERT INTO {pg.schema}.contacts SELECT k, 'x' || k FROM generate_series(1, 9) k")
    project.set_source(FIRST)
    first = project.run_json()
    assert first["counts"]["delete"] == 3
    assert [r[0] for r in pg.rows()] == [1, 5, 6, 7, 8, 9]
    # Put 2, 3 and 4 back: a second delete of any of them would show.
    pg.execute(f"INSERT INTO {pg.schema}.contacts VALUES (2, 'back'), (3, 'back'), (4, 'back')")
    project.set_source(SECOND)

    counts = project.plan_counts()
    run = project.run_json()

    assert sent(counts) == {
        "create": 0,
        "update": 0,
        "delete": 1,
        "unchanged": 2,
        "ignored": 0,
        "error": 0,
    }
    assert run["counts"]["delete"] == 1
    assert [r[0] for r in pg.rows()] == [1, 2, 3, 4, 6, 7, 8, 9]


def test_update_mode_never_creates(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync(mode="update", limits={"max_row_error_ratio": 0.5})
    pg.execute(f"INSERT INTO {pg.schema}.contacts SELECT k, 'old' FROM generate_series(1, 9) k")
    project.set_source([(k, f"new{k}") for k in range(1, 11)])

    run = project.run_json()

    assert run["status"] == "success"
    assert run["counts"]["update"] == 9
    assert run["counts"]["rejected"] == 1
    assert pg.rows() == [(k, f"new{k}") for k in range(1, 10)]
    (letter,) = project.dead_letters()
    assert letter["key"] == "10"
    assert letter["operation"] == "update"
    assert "no record with id" in letter["error"]
    assert letter["record"] == {"id": 10, "name": "new10"}
    # Not delivered, so not in state: the next plan tries it again.
    assert "10" not in project.state_keys()
    assert project.plan_counts()["update"] == 1


def test_update_mode_with_every_record_missing_fails_the_run(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(mode="update")
    project.set_source([(1, "a"), (2, "b")])

    run = project.run_json(code=1)

    assert run["status"] == "failed"
    assert "max_row_error_ratio" in run["error"]
    assert pg.rows() == []
    assert len(project.dead_letters()) >= 1


def test_null_and_duplicate_primary_keys_are_row_errors_never_sent(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(limits={"max_row_error_ratio": 0.5})
    rows = [(k, f"n{k}") for k in range(1, 11)]
    rows += [(3, "dup"), (None, "null key"), (None, "another null key")]
    project.set_source(rows)

    plan = project.plan_json()
    run = project.run_json()

    assert plan["counts"]["create"] == 9
    assert plan["counts"]["error"] == 4  # both rows of key 3 and both null keys
    messages = " | ".join(e["message"] for e in plan["row_errors"])
    assert "null primary key" in messages
    assert "duplicate primary key id = 3 in" in messages  # a number, not quoted text
    assert run["status"] == "success"
    assert run["counts"]["create"] == 9
    assert run["planned"]["error"] == 4
    assert pg.rows() == [(k, f"n{k}") for k in range(1, 11) if k != 3]
    assert "3" not in project.state_keys()


def test_a_delivered_key_that_becomes_duplicate_is_neither_updated_nor_deleted(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(
        on_removed="delete", allow_destructive=True, limits={"max_row_error_ratio": 1}
    )
    project.set_source([(k, f"n{k}") for k in range(1, 11)])
    project.run_json()
    project.set_source([(k, f"n{k}") for k in range(1, 11)] + [(3, "dup")])

    plan = project.plan_counts()
    project.run_json()

    assert (plan["update"], plan["delete"], plan["error"]) == (0, 0, 2)
    assert pg.rows() == [(k, f"n{k}") for k in range(1, 11)]


def test_one_duplicate_key_in_an_otherwise_unchanged_source_stays_under_the_error_ratio(
    project: RetlProject, pg: PostgresDb
) -> None:
    """2 bad rows of 101 are 2%, under the default max_row_error_ratio of 0.1, whether or not
    other rows changed in the same run."""
    project.write_sync()
    project.set_source([(k, f"n{k}") for k in range(1, 101)])
    project.run_json()
    project.set_source([(k, f"n{k}") for k in range(1, 101)] + [(3, "dup")])

    run = project.run_json()

    assert run["status"] == "success"
    assert run["planned"]["error"] == 2


def test_null_and_duplicate_keys_above_the_error_ratio_fail_the_run(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync()  # max_row_error_ratio defaults to 0.1
    project.set_source([(1, "a"), (2, "b"), (2, "c"), (None, "d")])

    run = project.run_json(code=1)

    assert run["status"] == "failed"
    assert "primary key" in run["error"]
    assert pg.rows() == [(1, "a")]


# -- incremental -------------------------------------------------------------------------------


def set_events(project: RetlProject, rows: list[tuple[int, str, str]]) -> None:
    project.warehouse("CREATE OR REPLACE TABLE src (id INTEGER, name VARCHAR, updated_at DATE)")
    if rows:
        values = ", ".join(f"({k}, '{n}', DATE '{d}')" for k, n, d in rows)
        project.warehouse(f"INSERT INTO src VALUES {values}")


def test_incremental_reads_only_rows_at_or_after_the_watermark_and_advances_it(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(incremental={"column": "updated_at"})
    set_events(project, [(1, "a1", "2024-01-01"), (2, "a2", "2024-01-02"), (3, "a3", "2024-01-03")])
    project.run_json()
    assert project.state_show()["watermark"].startswith("2024-01-03")

    set_events(
        project,
        [
            (1, "changed but old", "2024-01-01"),  # below the watermark: not read
            (2, "b2", "2024-01-06"),  # changed and moved forward
            (3, "a3", "2024-01-03"),  # at the watermark: read again, unchanged
            (4, "a4", "2024-01-05"),  # new
        ],
    )
    plan = project.plan_json()
    run = project.run_json()

    assert plan["source_rows"] == 3
    assert plan["incremental_from"].startswith("2024-01-03")
    assert {k: plan["counts"][k] for k in ("create", "update", "unchanged")} == {
        "create": 1,
        "update": 1,
        "unchanged": 1,
    }
    assert run["status"] == "success"
    assert pg.rows() == [(1, "a1"), (2, "b2"), (3, "a3"), (4, "a4")]
    assert project.state_show()["watermark"].startswith("2024-01-06")


def test_incremental_rejected_row_holds_the_watermark_back_until_it_is_delivered(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(
        f"ALTER TABLE {pg.schema}.contacts ADD CONSTRAINT no_bad CHECK (name NOT LIKE 'bad%')"
    )
    project.write_sync(incremental={"column": "updated_at"}, limits={"max_row_error_ratio": 0.5})
    set_events(
        project,
        [
            (1, "a1", "2024-01-01"),
            (2, "bad2", "2024-01-02"),
            (3, "a3", "2024-01-03"),
            (4, "a4", "2024-01-04"),
        ],
    )

    first = project.run_json()

    assert first["status"] == "success"
    assert first["counts"]["rejected"] == 1
    assert pg.rows() == [(1, "a1"), (3, "a3"), (4, "a4")]
    assert project.state_show()["watermark"].startswith("2024-01-02")
    plan = project.plan_json()
    assert plan["counts"]["create"] == 1  # key 2 again; 3 and 4 are read but unchanged
    assert plan["counts"]["unchanged"] == 2

    project.warehouse("UPDATE src SET name = 'fixed2' WHERE id = 2")
    second = project.run_json()

    assert second["status"] == "success"
    assert second["counts"]["create"] == 1
    assert pg.rows() == [(1, "a1"), (2, "fixed2"), (3, "a3"), (4, "a4")]
    assert project.state_show()["watermark"].startswith("2024-01-04")
    assert project.dead_letters() == []


def test_validation_refuses_incremental_with_on_removed_delete(project: RetlProject) -> None:
    project.write_sync(
        incremental={"column": "updated_at"}, on_removed="delete", allow_destructive=True
    )
    set_events(project, [(1, "a1", "2024-01-01")])

    validate = project.cli("validate", "--json")
    run = project.cli("run", "contacts", "--json")

    assert validate.code == 1
    problems = validate.json()["problems"]
    assert any(
        p["field"] == "on_removed" and "incremental" in p["message"] and p["severity"] == "error"
        for p in problems
    ), problems
    assert run.code == 1
    assert "on_removed" in run.err


# -- full resync -------------------------------------------------------------------------------


def test_full_resync_resends_every_row(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source([(k, f"n{k}") for k in range(1, 21)])
    project.run_json()
    pg.execute(f"UPDATE {pg.schema}.contacts SET name = 'edited by hand'")
    assert project.plan_counts()["unchanged"] == 20

    plan = project.plan_counts("contacts", "--full-resync")
    run = project.run_json("contacts", "--full-resync")

    assert plan["create"] == 20 and plan["unchanged"] == 0
    assert run["status"] == "success"
    assert run["counts"]["create"] == 20
    assert pg.rows() == [(k, f"n{k}") for k in range(1, 21)]
    assert project.plan_counts()["unchanged"] == 20


def test_full_resync_of_an_incremental_sync_reads_below_the_watermark_too(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(incremental={"column": "updated_at"})
    set_events(project, [(1, "a1", "2024-01-01"), (2, "a2", "2024-01-02")])
    project.run_json()
    project.warehouse("UPDATE src SET name = 'changed quietly' WHERE id = 1")
    assert project.plan_counts()["update"] == 0  # below the watermark: not read

    run = project.run_json("contacts", "--full-resync")

    assert run["counts"]["create"] == 2
    assert pg.rows() == [(1, "changed quietly"), (2, "a2")]
    assert project.state_show()["watermark"].startswith("2024-01-02")


def test_a_changed_mapping_changes_every_record(project: RetlProject, pg: PostgresDb) -> None:
    pg.execute(f"ALTER TABLE {pg.schema}.contacts ADD COLUMN source_system text")
    project.write_sync()
    project.set_source([(k, f"n{k}") for k in range(1, 6)])
    project.run_json()
    project.write_sync(
        mapping={"id": "id", "name": "name", "source_system": {"value": "warehouse"}}
    )

    plan = project.plan_json()
    project.run_json()

    assert plan["config_changed"] is True
    assert plan["counts"]["update"] == 5
    assert pg.rows(columns="id, source_system") == [(k, "warehouse") for k in range(1, 6)]


# -- the target the state describes (SPEC §6.2) ------------------------------------------------

TEN = [(k, f"n{k}") for k in range(1, 11)]


def other_spelling(url: str) -> str:
    """The test server's URL with `localhost` for 127.0.0.1 and the default port left out."""
    if "@127.0.0.1:5432/" not in url:
        pytest.skip("the test database is not at 127.0.0.1:5432")
    return url.replace("@127.0.0.1:5432/", "@localhost/")


def test_a_new_user_password_or_host_alias_of_the_same_server_is_the_same_target(
    project: RetlProject, pg: PostgresDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotating credentials sends nothing again and keeps the deletes pending (issue 15)."""
    project.write_sync(on_removed="delete", allow_destructive=True)
    project.set_source(TEN)
    assert project.run_json()["counts"]["create"] == 10
    role, secret = f"rotated_{pg.schema}", "s3cret-rotated"
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    try:
        pg.execute(f"GRANT USAGE ON SCHEMA {pg.schema} TO {role}")
        pg.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {pg.schema}.contacts TO {role}")
        # The delivery ledger retl keeps beside the table (README: exactly-once effect).
        pg.execute(f"GRANT SELECT, INSERT, DELETE ON {pg.schema}.retl_deliveries TO {role}")
        # and the claims a run takes on its table (two overlapping runs never both deliver)
        pg.execute(f"GRANT SELECT, INSERT, UPDATE ON {pg.schema}.retl_claims TO {role}")
        aliased = other_spelling(pg.url)
        rotated = aliased.replace("://postgres@", f"://{role}:{secret}@", 1)
        project.set_source(TEN[:8])  # 9 and 10 left the source: two deletes are pending

        for url in (aliased, rotated):
            monkeypatch.setenv("PG_URL", url)
            plan = project.plan_json()
            assert plan["target_change"] is None, url
            assert (plan["counts"]["create"], plan["counts"]["delete"]) == (0, 2), url
            assert plan["counts"]["unchanged"] == 8

        human = project.cli("plan", "contacts")
        run = project.run_json()

        assert "target changed" not in human.out
        assert run["counts"] == {"create": 0, "update": 0, "delete": 2, "rejected": 0}
        assert [r[0] for r in pg.rows()] == list(range(1, 9))
        assert not list(project.state_dir.glob("contacts@*"))
        assert secret not in human.output and role not in json.dumps(project.state_show())
        assert secret.encode() not in (project.state_dir / "contacts.duckdb").read_bytes()
    finally:
        pg.execute(f"DROP OWNED BY {role}")
        pg.execute(f"DROP ROLE {role}")


def test_a_run_that_cannot_reach_a_new_target_changes_no_state(
    project: RetlProject, pg: PostgresDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_sync(on_removed="delete", allow_destructive=True)
    project.set_source(TEN)
    project.run_json()
    project.set_source(TEN[:8])
    kept = project.state_show()
    monkeypatch.setenv("PG_URL", "postgresql://postgres@127.0.0.1:1/test")  # nothing listens

    failed = project.run_json(code=1)
    shown = project.state_show()

    assert failed["status"] == "failed" and "127.0.0.1:1" in (failed["error"] or "")
    assert shown["target"] == kept["target"] and shown["records"] == kept["records"] == 10
    assert shown["serial"] == kept["serial"] and shown["kept_aside"] == []
    assert not list(project.state_dir.glob("contacts@*"))
    monkeypatch.setenv("PG_URL", pg.url)  # pointed back: as if the failed run never happened
    back = project.plan_json()
    assert back["target_change"] is None
    assert (back["counts"]["create"], back["counts"]["delete"], back["counts"]["unchanged"]) == (
        0,
        2,
        8,
    )


def test_erasure_requests_after_a_switch_from_upsert_to_delete_mode_are_honoured(
    project: RetlProject, pg: PostgresDb
) -> None:
    rows = [(k, f"n{k}") for k in range(1, 401)]
    project.write_sync()
    project.set_source(rows)
    assert project.run_json()["counts"]["create"] == 400
    project.write_sync(
        mode="delete",
        allow_destructive=True,
        mapping={"id": "id"},
        limits={"max_deletes": 1000, "max_delete_ratio": 1.0},
    )
    project.set_source([])  # no erasure request yet: the switch alone deletes nothing
    switched = project.run_json()
    assert switched["counts"]["delete"] == 0
    assert switched["plan"]["mode_switch"]["previous"] == "upsert"
    project.set_source(rows)  # then every record is to be erased

    plan = project.plan_counts()
    run = project.run_json()

    assert (plan["delete"], plan["unchanged"], plan["ignored"]) == (400, 0, 0)
    assert run["counts"]["delete"] == 400
    assert pg.count() == 0


def test_state_an_older_version_kept_aside_is_used_again_when_the_sync_points_back(
    project: RetlProject, pg: PostgresDb
) -> None:
    """Until this release a kept-aside file was named after the digest of a location with
    `user@` in it: pointing back after the upgrade still finds it by the target it names."""
    pg.execute(f"CREATE TABLE {pg.schema}.contacts2 (id integer PRIMARY KEY, name text)")
    project.write_sync()
    project.set_source(TEN)
    project.run_json()
    project.write_sync(destination={"name": "pg", "object": f"{pg.schema}.contacts2"})
    project.run_json()
    (kept,) = project.state_dir.glob("contacts@*.duckdb")
    con = duckdb.connect(str(kept))
    try:
        (text,) = con.execute("SELECT value FROM meta WHERE name = 'target'").fetchone() or ("",)
        older = json.loads(text) | {"location": "postgresql://postgres@127.0.0.1:5432/test"}
        older_text = json.dumps(older, sort_keys=True)
        con.execute("UPDATE meta SET value = ? WHERE name = 'target'", [older_text])
    finally:
        con.close()
    kept.rename(kept.with_name(f"contacts@{TargetId.digest_of_text(older_text)}.duckdb"))
    project.write_sync()  # back to the first table

    back = project.plan_json()

    assert back["target_change"]["restored"] is True
    assert back["counts"]["create"] == 0 and back["counts"]["unchanged"] == 10
