"""The Plan is the contract (issue 7): a saved plan is applied exactly or refused, and state
describes one target, so pointing a sync elsewhere sends everything there and nothing is lost."""

from __future__ import annotations

import json
import os
import stat

import pytest
from run_harness import PostgresDb, RetlProject

from reverse_etl.destinations.base import url_location

TEN = [(k, f"n{k}") for k in range(1, 11)]


def test_changing_the_object_creates_every_row_in_the_new_table_and_back_sends_nothing(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"CREATE TABLE {pg.schema}.contacts2 (id integer PRIMARY KEY, name text)")
    project.write_sync()
    project.set_source(TEN)
    project.run_json()

    project.write_sync(destination={"name": "pg", "object": f"{pg.schema}.contacts2"})
    plan = project.cli("plan", "contacts")
    moved = project.plan_json()
    run = project.run_json()

    assert "target changed" in plan.out and "contacts -> " in plan.out
    assert "every row counts as new" in plan.out
    assert moved["counts"]["create"] == 10 and moved["counts"]["delete"] == 0
    assert moved["target_change"]["previous"]["object"] == f"{pg.schema}.contacts"
    assert run["counts"]["create"] == 10
    assert pg.count("contacts2") == 10

    project.write_sync()  # back to the first table
    back = project.plan_json()
    again = project.run_json()

    assert back["target_change"]["restored"] is True
    assert back["counts"]["create"] == 0 and back["counts"]["unchanged"] == 10
    assert again["counts"] == {"create": 0, "update": 0, "delete": 0, "rejected": 0}
    shown = project.cli("state", "show", "contacts", "--json").json()
    assert json.dumps(shown).count("contacts") >= 1 and "contacts2" not in json.dumps(shown)


def test_a_new_target_never_turns_the_old_targets_keys_into_deletes(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"CREATE TABLE {pg.schema}.other (id integer PRIMARY KEY, name text)")
    project.write_sync(on_removed="delete", allow_destructive=True)
    project.set_source(TEN)
    project.run_json()
    project.set_source(TEN[:2])
    project.write_sync(
        on_removed="delete",
        allow_destructive=True,
        destination={"name": "pg", "object": f"{pg.schema}.other"},
    )

    plan = project.plan_json()

    assert (plan["counts"]["create"], plan["counts"]["delete"]) == (2, 0)


def test_a_saved_plan_is_applied_exactly(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source(TEN)
    out = project.root / "plan.json"

    planned = project.cli("plan", "contacts", "--out", str(out))
    applied = project.cli("run", "--plan", str(out), "--json")

    assert planned.code == 0 and "retl run --plan" in planned.out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert applied.code == 0, applied.output
    (run,) = applied.json()["runs"]
    assert run["status"] == "success"
    assert run["counts"]["create"] == 10
    assert run["planned"]["create"] == 10
    assert pg.count() == 10


def test_a_saved_plan_is_refused_when_the_source_changed(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync()
    project.set_source(TEN)
    out = project.root / "plan.json"
    project.cli("plan", "contacts", "--out", str(out))
    project.set_source([*TEN, (11, "n11")])

    applied = project.cli("run", "--plan", str(out), "--json")

    assert applied.code == 1
    (run,) = applied.json()["runs"]
    assert run["status"] == "refused"
    assert "plan is stale" in run["error"] and "source" in run["error"]
    assert "retl plan" in run["hint"]
    assert pg.count() == 0


def test_a_saved_plan_is_refused_after_another_run(project: RetlProject, pg: PostgresDb) -> None:
    project.write_sync()
    project.set_source(TEN[:5])
    project.run_json()
    project.set_source(TEN)
    out = project.root / "plan.json"
    project.cli("plan", "contacts", "--out", str(out))
    project.run_json()  # another run in between

    applied = project.cli("run", "--plan", str(out), "--json")

    (run,) = applied.json()["runs"]
    assert applied.code == 1 and run["status"] == "refused"
    assert "state serial" in run["error"] and "plan made at" in run["error"]


def test_a_saved_plan_is_refused_when_the_sync_file_changed(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync()
    project.set_source(TEN)
    out = project.root / "plan.json"
    project.cli("plan", "contacts", "--out", str(out))
    project.write_sync(mapping={"id": "id", "name": "{{ name | upper }}"})

    applied = project.cli("run", "--plan", str(out), "--json")

    (run,) = applied.json()["runs"]
    assert run["status"] == "refused" and "configuration" in run["error"]
    assert pg.count() == 0


def test_a_plan_file_holds_no_secret(
    project: RetlProject, pg: PostgresDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_sync()
    project.set_source(TEN)
    out = project.root / "plan.json"
    secret_url = pg.url.replace("postgres@", "postgres:CANARY-s3cret@", 1)
    monkeypatch.setenv("PG_URL", secret_url)  # the project's retl.yml reads ${PG_URL}

    result = project.cli("plan", "contacts", "--out", str(out))

    assert result.code == 0, result.output
    text = out.read_text()
    assert "CANARY-s3cret" not in text
    assert "CANARY-s3cret" not in result.output


def test_a_damaged_plan_file_is_a_clear_error(project: RetlProject, pg: PostgresDb) -> None:
    out = project.root / "plan.json"
    out.write_text('{"format": "retl-plan", "version": 1, "syncs": [{"name": "x"}]}')

    applied = project.cli("run", "--plan", str(out))

    assert applied.code == 1
    assert "damaged or incomplete" in applied.err
    assert "Traceback" not in applied.output


def test_state_show_names_the_target_and_what_is_kept_aside(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"CREATE TABLE {pg.schema}.contacts2 (id integer PRIMARY KEY, name text)")
    project.write_sync()
    project.set_source(TEN)
    project.run_json()
    project.write_sync(destination={"name": "pg", "object": f"{pg.schema}.contacts2"})
    project.run_json()

    shown = project.state_show()
    human = project.cli("state", "show", "contacts")

    assert shown["target"]["object"] == f"{pg.schema}.contacts2"
    assert shown["target"]["type"] == "postgres"
    # Server and database: no user or password, one spelling per server (SPEC §6.2).
    assert shown["target"]["location"] == url_location(pg.url)
    assert "@" not in shown["target"]["location"]
    assert len(shown["kept_aside"]) == 1
    assert f"{pg.schema}.contacts2" in human.out + human.err


def test_status_run_all_and_the_engine_agree_on_what_is_due(
    project: RetlProject, pg: PostgresDb
) -> None:
    from reverse_etl.config import load_project
    from reverse_etl.run import Engine

    project.write_sync(schedule="0 0 1 1 *")  # once a year
    project.set_source(TEN)
    project.run_json()

    status = project.cli("status", "--json").json()
    run_all = project.cli("run", "--all", "--json").json()
    engine = Engine(load_project(project.root))
    due = engine.next_due(engine.sync("contacts"))

    (entry,) = status["syncs"]
    (skipped,) = run_all["runs"]
    assert due is not None and entry["next_due"] == due.isoformat()
    assert skipped["status"] == "skipped"
    assert f"not due until {due:%Y-%m-%d %H:%M}" in skipped["error"]
    # a skipped run does not move the schedule: the next due time stays the same
    again = project.cli("status", "--json").json()["syncs"][0]["next_due"]
    assert again == entry["next_due"]
