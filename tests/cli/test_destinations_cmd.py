"""`retl destinations`: connectors, a destination's objects, an object's fields, and errors
that are one message and an exit code, never a traceback."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
destinations:
  app_db:
    type: sql
    url: sqlite:///app.sqlite
  warehouse_pg:
    type: postgres
    url: ${PG_URL}
"""


@pytest.fixture(autouse=True)
def unreachable_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_URL", "postgresql://retl@127.0.0.1:1/none")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "retl.yml").write_text(PROJECT)
    with sqlite3.connect(tmp_path / "app.sqlite") as conn:
        conn.execute(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT)"
        )
        conn.execute("CREATE TABLE accounts (account_id INTEGER PRIMARY KEY)")
    return tmp_path


def run(retl_cli: Callable[..., Any], *args: str) -> tuple[int, str, str]:
    result = retl_cli(*args)
    return result.code, result.out, result.err


def test_without_arguments_lists_connectors_and_configured_destinations(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    code, out, err = run(retl_cli, "destinations", "--json", "--project-dir", str(project))

    assert code == 0, err
    document = json.loads(out)
    connectors = {c["type"]: c for c in document["connectors"]}
    assert {"file", "postgres", "sql"} <= set(connectors)
    assert connectors["sql"]["actions"] == ["insert", "update", "upsert", "delete"]
    assert connectors["postgres"]["default_batch_size"] > 0
    assert document["destinations"] == [
        {"name": "app_db", "type": "sql"},
        {"name": "warehouse_pg", "type": "postgres"},
    ]


def test_human_listing_shows_both_tables(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, _ = run(retl_cli, "destinations", "--project-dir", str(project))

    assert code == 0
    assert "connectors" in out and "destinations in retl.yml" in out
    assert "postgres" in out and "warehouse_pg" in out


def test_connectors_are_listed_outside_a_project(
    tmp_path: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    code, out, _ = run(retl_cli, "destinations", "--json")

    assert code == 0
    document = json.loads(out)
    assert document["destinations"] == []
    assert "sql" in {c["type"] for c in document["connectors"]}


def test_a_destination_lists_its_objects(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, err = run(
        retl_cli, "destinations", "app_db", "--json", "--project-dir", str(project)
    )

    assert code == 0, err
    assert json.loads(out) == {"destination": "app_db", "objects": ["accounts", "contacts"]}


def test_an_object_lists_its_fields_and_types(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, err = run(
        retl_cli, "destinations", "app_db", "contacts", "--json", "--project-dir", str(project)
    )

    assert code == 0, err
    fields = {f["name"]: f for f in json.loads(out)["fields"]}
    assert list(fields) == ["id", "email", "name"]
    assert fields["email"] == {
        "name": "email",
        "type": "TEXT",
        "nullable": False,
        "unique": True,
        "required": True,
        "writable": True,
    }
    assert fields["name"]["nullable"] is True and fields["name"]["required"] is False


def test_human_fields_table(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, _ = run(
        retl_cli, "destinations", "app_db", "contacts", "--project-dir", str(project)
    )

    assert code == 0
    assert "fields of app_db contacts" in out
    assert "email" in out and "TEXT" in out


def test_an_unknown_destination_is_a_usage_error_with_a_suggestion(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    code, out, err = run(retl_cli, "destinations", "app", "--project-dir", str(project))

    assert code == 2
    assert out == ""
    assert "no destination named 'app' in retl.yml" in err
    assert "did you mean 'app_db'?" in err
    assert "Traceback" not in err


def test_a_missing_table_is_one_clear_error(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, _, err = run(retl_cli, "destinations", "app_db", "contact", "--project-dir", str(project))

    assert code == 1
    assert "table contact does not exist in destination 'app_db'" in err
    assert "did you mean contacts?" in err
    assert "Traceback" not in err


def test_an_unreachable_database_is_one_clear_error(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    code, _, err = run(retl_cli, "destinations", "warehouse_pg", "--project-dir", str(project))

    assert code == 1
    assert "cannot connect to PostgreSQL destination 'warehouse_pg'" in err
    assert "Traceback" not in err


def test_an_invalid_destination_block_shows_its_problems(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    (tmp_path / "retl.yml").write_text(
        "version: 1\ndestinations:\n  app_db:\n    type: sql\n    ulr: sqlite:///x.sqlite\n"
    )

    code, _, err = run(retl_cli, "destinations", "app_db", "--project-dir", str(tmp_path))

    assert code == 1
    assert "retl.yml:5: destinations.app_db.ulr: unknown key 'ulr'" in err
    assert "destination 'app_db' in retl.yml is invalid" in err


def test_postgres_objects_and_fields(
    tmp_path: Path,
    postgres_url: str,
    pg_schema: str,
    retl_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE "{pg_schema}".contacts '
            "(id bigint PRIMARY KEY, email text NOT NULL, score numeric(5,2))"
        )
    (tmp_path / "retl.yml").write_text(PROJECT)
    monkeypatch.setenv("PG_URL", postgres_url)

    code, out, err = run(
        retl_cli, "destinations", "warehouse_pg", "--json", "--project-dir", str(tmp_path)
    )
    assert code == 0, err
    assert f"{pg_schema}.contacts" in json.loads(out)["objects"]

    code, out, err = run(
        retl_cli,
        "destinations",
        "warehouse_pg",
        f"{pg_schema}.contacts",
        "--json",
        "--project-dir",
        str(tmp_path),
    )
    assert code == 0, err
    assert json.loads(out)["fields"] == [
        {
            "name": "id",
            "type": "bigint",
            "nullable": False,
            "unique": True,
            "required": True,
            "writable": True,
        },
        {
            "name": "email",
            "type": "text",
            "nullable": False,
            "unique": False,
            "required": True,
            "writable": True,
        },
        {
            "name": "score",
            "type": "numeric(5,2)",
            "nullable": True,
            "unique": False,
            "required": False,
            "writable": True,
        },
    ]
