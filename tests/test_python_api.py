"""The engine is usable from Python without the CLI (STYLE: a thin CLI over a library)."""

from __future__ import annotations

import json
from pathlib import Path

import reverse_etl
from reverse_etl import Engine, RunOptions, load_project

RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  files:
    type: file
    path: out
"""
SYNC = """warehouse: memory
source:
  sql: select * from (values (1, 'ada'), (2, 'alan')) people(id, name)
destination:
  name: files
  object: people
mode: insert
primary_key: id
mapping:
  id: id
  name: "{{ name | upper }}"
"""


def test_plan_and_run_from_python(tmp_path: Path) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    (tmp_path / "syncs" / "people.yml").write_text(SYNC)
    project = load_project(tmp_path, env={})
    assert project.all_problems == []
    engine = Engine(project)
    sync = project.syncs["people"]

    plan = engine.plan(sync)
    assert plan.counts.create == 2
    assert plan.samples["create"][0] == {"id": 1, "name": "ADA"}

    outcome = engine.run(sync, RunOptions())
    assert outcome.status == "success"
    assert outcome.counts["create"] == 2
    lines = (tmp_path / "out" / "people.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["name"] for line in lines) == ["ADA", "ALAN"]
    assert engine.plan(sync).empty


def test_the_version_is_importable_without_the_engine() -> None:
    assert reverse_etl.__version__ == "0.1.0"
    assert "Engine" in reverse_etl.__all__
