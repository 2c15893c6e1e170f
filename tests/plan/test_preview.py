"""`retl preview` reads a real warehouse and shows records exactly as they would be sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

import reverse_etl.cli.commands  # noqa: F401 - registers the commands
from reverse_etl.cli.app import app

runner = CliRunner()


@pytest.fixture
def pg_source(postgres_url: str) -> Iterator[str]:
    table = f"preview_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id int, first_name text, last_name text, email text, "
            "signed_up timestamptz)"
        )
        conn.execute(
            f"INSERT INTO {table} VALUES "
            "(1, 'Ada', 'Lovelace', 'ada@example.com', '2024-01-02 03:04:05+00'), "
            "(2, 'Alan', 'Turing', 'alan@example.com', NULL), "
            "(2, 'Dup', 'Key', 'dup@example.com', NULL), "
            "(NULL, 'No', 'Key', 'nokey@example.com', NULL)"
        )
    yield table
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")


def write_project(root: Path, table: str) -> None:
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(
        "version: 1\n"
        "warehouses:\n  pg:\n    url: ${RETL_TEST_PG}\n"
        "destinations:\n  app:\n    type: postgres\n    url: ${RETL_TEST_PG}\n"
        "output:\n  samples: full\n"  # these tests read the mapped values
    )
    (root / "syncs" / "people.yml").write_text(
        "warehouse: pg\n"
        f"source:\n  sql: select * from {table} order by id nulls last, first_name\n"
        "destination:\n  name: app\n  object: people\n"
        "mode: upsert\nprimary_key: id\n"
        "mapping:\n"
        "  person_id: id\n"
        '  name: "{{ first_name }} {{ last_name | upper }}"\n'
        "  email: email\n"
        "  signed_up: signed_up\n"
        "  origin: {value: warehouse}\n"
    )


def test_preview_on_postgres_shows_counts_and_mapped_records(
    tmp_path: Path, postgres_url: str, pg_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path, pg_source)
    monkeypatch.setenv("RETL_TEST_PG", postgres_url)
    result = runner.invoke(
        app, ["preview", "people", "--limit", "2", "--json", "--project-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"] == 4
    assert document["null_keys"] == 1
    assert document["duplicate_keys"] == 1
    assert document["duplicate_rows"] == 2
    assert document["fields"] == ["person_id", "name", "email", "signed_up", "origin"]
    assert document["records"][0] == {
        "person_id": 1,
        "name": "Ada LOVELACE",
        "email": "ada@example.com",
        "signed_up": "2024-01-02 03:04:05+00:00",
        "origin": "warehouse",
    }
    assert len(document["records"]) == 2


def test_preview_renders_a_table_for_people(
    tmp_path: Path, postgres_url: str, pg_source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path, pg_source)
    monkeypatch.setenv("RETL_TEST_PG", postgres_url)
    result = runner.invoke(app, ["preview", "people", "--project-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "4 rows" in result.output
    assert "Ada LOVELACE" in result.output
    assert "null primary keys: 1" in result.output


def test_preview_of_a_broken_query_is_one_clear_error(tmp_path: Path, postgres_url: str) -> None:
    write_project(tmp_path, "no_such_table_here")
    result = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "preview", "people", "--project-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "RETL_TEST_PG": postgres_url},
    )
    assert result.returncode == 1
    assert "query on warehouse 'pg' failed" in result.stderr
    assert 'relation "no_such_table_here" does not exist' in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
