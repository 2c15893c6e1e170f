"""The mapping seen from a user's project (DuckDB warehouse, SQLite destination in tmp_path):
change detection that no value can fool, and templates that keep a NULL a NULL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from reverse_etl import Engine, load_project
from reverse_etl.run import RunOptions

PROJECT = {
    "version": 1,
    "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
    "destinations": {"app": {"type": "sql", "url": "sqlite:///app.sqlite"}},
}


class Project:
    """`retl.yml`, one sync `people` of `select * from people`, and the two databases."""

    def __init__(self, root: Path, mapping: dict[str, Any], table: str) -> None:
        self.root = root
        (root / "syncs").mkdir(parents=True)
        (root / "retl.yml").write_text(yaml.safe_dump(PROJECT), encoding="utf-8")
        sync = {
            "warehouse": "wh",
            "source": {"sql": "select * from people order by id"},
            "destination": {"name": "app", "object": "people"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": mapping,
        }
        (root / "syncs" / "people.yml").write_text(yaml.safe_dump(sync), encoding="utf-8")
        with sqlite3.connect(root / "app.sqlite") as conn:
            conn.execute(table)

    def source(self, rows: list[tuple[Any, ...]]) -> None:
        """Replace the warehouse table `people (id, a, b)` with these rows."""
        con = duckdb.connect(str(self.root / "wh.duckdb"))
        try:
            con.execute("CREATE OR REPLACE TABLE people (id INTEGER, a VARCHAR, b VARCHAR)")
            con.executemany("INSERT INTO people VALUES (?, ?, ?)", rows)
        finally:
            con.close()

    def plan_counts(self) -> dict[str, int]:
        project = load_project(self.root)
        return Engine(project).plan(project.syncs["people"]).counts.as_dict()

    def run(self) -> dict[str, int]:
        project = load_project(self.root)
        outcome = Engine(project).run(project.syncs["people"], RunOptions())
        assert outcome.status == "success", outcome.error
        return outcome.counts

    def destination(self) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.root / "app.sqlite") as conn:
            return conn.execute("SELECT * FROM people ORDER BY id").fetchall()


@pytest.fixture
def people(tmp_path: Path) -> Project:
    return Project(
        tmp_path,
        {"id": "id", "a": "a", "b": "b"},
        "CREATE TABLE people (id INTEGER PRIMARY KEY, a TEXT, b TEXT)",
    )


# -- change detection (issue 8 item 1) ---------------------------------------------------------


def test_a_value_holding_the_old_separator_cannot_hide_a_change(people: Project) -> None:
    # Under the old `name RS value` hash both rows read "a RS p RS b RS q RS b RS r RS id RS 1".
    people.source([(1, "p\x1eb\x1eq", "r")])
    people.run()
    people.source([(1, "p", "q\x1eb\x1er")])

    assert people.plan_counts()["update"] == 1
    assert people.run()["update"] == 1
    assert people.destination() == [(1, "p", "q\x1eb\x1er")]


def test_the_text_nul_is_not_mistaken_for_null(people: Project) -> None:
    people.source([(1, "x", None)])
    people.run()
    people.source([(1, "x", "\x00")])

    assert people.plan_counts()["update"] == 1
    people.run()
    assert people.destination() == [(1, "x", "\x00")]
    people.source([(1, "x", None)])
    assert people.plan_counts()["update"] == 1


# -- templates over NULL (issue 8 item 3) ------------------------------------------------------


@pytest.fixture
def templated(tmp_path: Path) -> Project:
    project = Project(
        tmp_path,
        {
            "id": "id",
            "a": "{{ a | lower }}",
            "b": "{{ a | default('none') | upper }}-{{ b | default('') }}",
        },
        "CREATE TABLE people (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b TEXT)",
    )
    project.source([(1, "Ann", "x"), (2, None, None)])
    return project


def test_a_not_null_column_rejects_a_template_over_null(templated: Project) -> None:
    project = load_project(templated.root)
    outcome = Engine(project).run(project.syncs["people"], RunOptions())

    assert outcome.counts["rejected"] == 1
    assert templated.destination() == [(1, "ann", "ANN-x")]


def test_preview_shows_a_template_over_null_as_null(templated: Project) -> None:
    from reverse_etl.plan.preview import preview_sync

    project = load_project(templated.root)
    # The records as sent (`--json` masks them unless output.samples is full).
    assert preview_sync(project, project.syncs["people"]).records == [
        {"id": 1, "a": "ann", "b": "ANN-x"},
        {"id": 2, "a": None, "b": "NONE-"},
    ]


def test_preview_table_shows_null_not_an_empty_string(
    templated: Project, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("preview", "people", "--project-dir", str(templated.root))

    assert result.code == 0, result.err
    (row,) = [line for line in (result.out + result.err).splitlines() if "NONE-" in line]
    assert "\u2205" in row  # the table's NULL marker; '' would show as nothing
