"""`retl state migrate` (state/migrate.py): the demo project's whole state moves from `.retl/`
to PostgreSQL and back, verified, so that plans afterwards send nothing; a second migration
finds it already there; differing state is refused unless --force; locks are respected."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reverse_etl.config import load_project
from reverse_etl.state.deadletters import DeadLetterEntry, DeadLetterQueue
from reverse_etl.state.migrate import requested_place
from reverse_etl.state.store import open_store

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
SYNCS = ("accounts_to_app", "customers_to_app", "events_export", "account_health")
Cli = Callable[..., Any]


@pytest.fixture(scope="module")
def demo_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project after two runs of every sync (so there is history)."""
    from reverse_etl.cli import main

    root = tmp_path_factory.mktemp("demo")
    for name in ("retl.yml", "syncs", "sql", "examples/demo/warehouse.duckdb"):
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    for _ in range(2):
        with pytest.raises(SystemExit) as exited:
            main(["run", *SYNCS, "--project-dir", str(root)])
        assert exited.value.code == 0
    return root


@pytest.fixture
def demo(demo_once: Path, tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(demo_once, root)
    return root


@pytest.fixture
def state_schema(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A schema name of this test's own for the state (RETL_STATE_URL points at the server)."""
    name = f"retl_migrate_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("RETL_STATE_URL", postgres_url)
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _state_block(root: Path, block: str) -> None:
    """Rewrite retl.yml's state: block as a user would after `retl state migrate`."""
    text = (root / "retl.yml").read_text()
    text = text.split("\nstate:\n", 1)[0]
    (root / "retl.yml").write_text(text.rstrip("\n") + "\n\n" + block)


def _plan_counts(retl_cli: Cli, root: Path) -> dict[str, dict[str, int]]:
    result = retl_cli("plan", *SYNCS, "--json", "--project-dir", str(root))
    assert result.code == 0, result.err
    return {
        plan["name"]: {op: plan["counts"][op] for op in ("create", "update", "delete")}
        for plan in result.json()["syncs"]
    }


def _history(retl_cli: Cli, root: Path) -> list[tuple[str, str, str]]:
    result = retl_cli("runs", "--json", "--project-dir", str(root))
    assert result.code == 0, result.err
    return sorted((r["id"], r["sync"], r["status"]) for r in result.json()["runs"])


NOTHING = {"create": 0, "update": 0, "delete": 0}


def _postgres(schema: str) -> str:
    return f"state:\n  backend: postgres\n  url: ${{RETL_STATE_URL}}\n  schema: {schema}\n"


def test_the_demo_moves_to_postgres_and_back_and_plans_nothing_to_send(
    demo: Path, state_schema: str, retl_cli: Cli, tmp_path: Path
) -> None:
    history = _history(retl_cli, demo)
    assert len(history) >= len(SYNCS)

    moved = retl_cli(
        "state", "migrate", "--to", "postgres", "--schema", state_schema,
        "--project-dir", str(demo),
    )  # fmt: skip

    assert moved.code == 0, moved.err
    assert "now put this in retl.yml" in moved.out
    assert "url: ${RETL_STATE_URL}" in moved.out
    assert "left untouched" in moved.out
    assert all(len(line) <= 80 for line in moved.out.splitlines() if "│" in line or "─" in line)
    assert "backend: postgres" in moved.out and f"schema: {state_schema}" in moved.out
    _state_block(demo, _postgres(state_schema))

    assert _plan_counts(retl_cli, demo) == dict.fromkeys(SYNCS, NOTHING)
    assert _history(retl_cli, demo) == history
    status = retl_cli("status", "--project-dir", str(demo))
    assert f"schema {state_schema}" in status.out

    # Back to local, into a copy of the project that never had .retl/.
    back = tmp_path / "back"
    shutil.copytree(demo, back, ignore=shutil.ignore_patterns(".retl"))
    returned = retl_cli("state", "migrate", "--to", "local", "--project-dir", str(back))
    assert returned.code == 0, returned.err
    assert "backend: local" in returned.out
    _state_block(back, "state:\n  backend: local\n")

    assert _plan_counts(retl_cli, back) == dict.fromkeys(SYNCS, NOTHING)
    assert _history(retl_cli, back) == history


def test_state_kept_aside_for_another_target_survives_the_move(
    demo: Path, state_schema: str, retl_cli: Cli
) -> None:
    sync_file = demo / "syncs" / "accounts_to_app.yml"
    original = sync_file.read_text()
    sync_file.write_text(original.replace("object: accounts", "object: accounts_copy"))
    ran = retl_cli("run", "accounts_to_app", "--project-dir", str(demo))
    assert ran.code == 0, ran.err

    moved = retl_cli(
        "state", "migrate", "--to", "postgres", "--schema", state_schema, "--json",
        "--project-dir", str(demo),
    )  # fmt: skip

    assert moved.code == 0, moved.err
    report = moved.json()
    accounts = next(s for s in report["syncs"] if s["sync"] == "accounts_to_app")
    assert [k["current"] for k in accounts["kept"]] == [True, False]
    assert all(k["matches"] for k in accounts["kept"])
    _state_block(demo, _postgres(state_schema))
    sync_file.write_text(original)  # pointed back at the first object
    assert _plan_counts(retl_cli, demo)["accounts_to_app"] == NOTHING


def test_a_second_migration_finds_everything_already_there(
    demo: Path, state_schema: str, retl_cli: Cli
) -> None:
    args = ("state", "migrate", "--to", "postgres", "--schema", state_schema)
    first = retl_cli(*args, "--json", "--project-dir", str(demo))
    assert first.code == 0, first.err

    again = retl_cli(*args, "--json", "--project-dir", str(demo))

    assert again.code == 0, again.err
    report = again.json()
    assert {s["outcome"] for s in report["syncs"]} == {"already there"}
    runs = next(t for t in report["tables"] if t["table"] == "runs")
    assert runs["copied"] == 0 and runs["verified"] == runs["rows"] > 0
    assert _count_runs(state_schema) == runs["rows"]  # merged by run id, never twice


def _count_runs(schema: str) -> int:
    with psycopg.connect(_url()) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".runs').fetchone()
    return int(row[0]) if row else 0


def test_differing_state_in_the_destination_is_refused_unless_forced(
    demo: Path, state_schema: str, retl_cli: Cli
) -> None:
    args = ("state", "migrate", "--to", "postgres", "--schema", state_schema)
    assert retl_cli(*args, "--project-dir", str(demo)).code == 0
    # The local state moves on: one more run after the source changed.
    (demo / "syncs" / "accounts_to_app.yml").write_text(
        (demo / "syncs" / "accounts_to_app.yml")
        .read_text()
        .replace("from analytics.accounts", "from analytics.accounts where account_id <> 1")
    )
    for path in (demo / ".retl" / "state").glob("accounts_to_app*"):
        path.unlink()
    retl_cli("run", "accounts_to_app", "--full-resync", "--project-dir", str(demo))

    refused = retl_cli(*args, "--project-dir", str(demo))

    assert refused.code == 1
    assert "accounts_to_app" in refused.err and "--force" in refused.err
    assert "customers_to_app" not in refused.err.split("hint")[0]

    forced = retl_cli(*args, "--force", "--json", "--project-dir", str(demo))
    assert forced.code == 0, forced.err
    outcomes = {s["sync"]: s["outcome"] for s in forced.json()["syncs"]}
    assert outcomes["accounts_to_app"] == "replaced"
    assert outcomes["customers_to_app"] == "already there"
    again = retl_cli(*args, "--json", "--project-dir", str(demo))
    assert {s["outcome"] for s in again.json()["syncs"]} == {"already there"}


def test_dead_letters_and_pauses_arrive(demo: Path, state_schema: str, retl_cli: Cli) -> None:
    project = load_project(demo)
    with open_store(project) as store:
        DeadLetterQueue(store.database()).add(
            "customers_to_app",
            "run-1",
            [DeadLetterEntry("42", "update", {"email": "x"}, "400 Bad Request: email invalid")],
        )
    assert (
        retl_cli(
            "pause", "events_export", "--reason", "partner asked", "--project-dir", str(demo)
        ).code
        == 0
    )
    before = retl_cli("dlq", "customers_to_app", "--json", "--project-dir", str(demo)).json()

    moved = retl_cli(
        "state", "migrate", "--to", "postgres", "--schema", state_schema,
        "--project-dir", str(demo),
    )  # fmt: skip
    assert moved.code == 0, moved.err
    _state_block(demo, _postgres(state_schema))

    after = retl_cli("dlq", "customers_to_app", "--json", "--project-dir", str(demo)).json()
    assert after == before
    status = retl_cli("status", "--json", "--project-dir", str(demo)).json()
    pauses = {s["sync"]: (s["pause"] or {}).get("reason") for s in status["syncs"]}
    assert pauses["events_export"] == "partner asked"
    assert state_schema in status["state"]["where"]


def test_a_held_lock_refuses_the_migration(demo: Path, state_schema: str, retl_cli: Cli) -> None:
    with open_store(load_project(demo)) as store, store.lock("customers_to_app", "retl run"):
        refused = retl_cli(
            "state", "migrate", "--to", "postgres", "--schema", state_schema,
            "--project-dir", str(demo),
        )  # fmt: skip

    assert refused.code == 1
    assert "customers_to_app" in refused.err
    with psycopg.connect(_url()) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = 'retl_snapshot'",
            (state_schema,),
        ).fetchone()
    assert found == (0,)


def _url() -> str:
    return os.environ["RETL_STATE_URL"]


def test_migrating_to_where_state_already_is_a_clear_error(demo: Path, retl_cli: Cli) -> None:
    result = retl_cli("state", "migrate", "--to", "local", "--project-dir", str(demo))

    assert result.code == 2
    assert "same place" in result.err


def test_exactly_one_of_to_and_from(demo: Path, retl_cli: Cli) -> None:
    neither = retl_cli("state", "migrate", "--project-dir", str(demo))
    both = retl_cli(
        "state", "migrate", "--to", "local", "--from", "local", "--project-dir", str(demo)
    )

    assert neither.code == both.code == 2
    assert "--to" in neither.err and "--from" in both.err


def test_from_copies_into_the_place_retl_yml_names_now(
    demo: Path, state_schema: str, retl_cli: Cli, tmp_path: Path
) -> None:
    assert retl_cli(
        "state", "migrate", "--to", "postgres", "--schema", state_schema,
        "--project-dir", str(demo),
    ).code == 0  # fmt: skip
    fresh = tmp_path / "fresh"
    shutil.copytree(demo, fresh, ignore=shutil.ignore_patterns(".retl"))

    pulled = retl_cli(
        "state", "migrate", "--from", "postgres", "--schema", state_schema,
        "--project-dir", str(fresh),
    )  # fmt: skip

    assert pulled.code == 0, pulled.err
    assert "now put this in retl.yml" not in pulled.out  # retl.yml says local already
    assert _plan_counts(retl_cli, fresh) == dict.fromkeys(SYNCS, NOTHING)


def test_a_password_in_the_url_is_never_suggested_for_retl_yml(demo: Path) -> None:
    place = requested_place(
        load_project(demo), "postgres", url="postgresql://retl:hunter2@db.example/state"
    )

    assert "hunter2" not in place.retl_yml()
    assert "url: ${RETL_STATE_URL}" in place.retl_yml()


def test_the_json_report_says_what_was_verified(
    demo: Path, state_schema: str, retl_cli: Cli
) -> None:
    result = retl_cli(
        "state", "migrate", "--to", "postgres", "--schema", state_schema, "--json",
        "--project-dir", str(demo),
    )  # fmt: skip

    report = json.loads(result.out)
    assert report["ok"] is True and report["mismatches"] == []
    assert sorted(s["sync"] for s in report["syncs"]) == sorted(SYNCS)
    for sync in report["syncs"]:
        for kept in sync["kept"]:
            assert kept["records"] == kept["destination_records"] > 0
            assert kept["digest"] == kept["destination_digest"]
    assert report["retl_yml"].startswith("state:\n  backend: postgres\n")
