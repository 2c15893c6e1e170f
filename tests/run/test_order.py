"""`after:` orders the syncs of one `retl run --all`; a cycle of `after:` links fails the syncs
in the cycle, naming it, and every other sync still runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("clean_env")

RETL_YML = """\
version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: sql
    url: sqlite:///out/app.sqlite
    create_tables: true
"""
SYNC = """\
warehouse: memory
source:
  sql: select 1 as id, 'x' as email
destination:
  name: app
  object: {name}
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
schedule: {schedule}
"""
AFTER = {"a": "{after: [b]}", "b": "{after: [a]}", "c": "manual", "d": "{after: [c]}"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    for name, schedule in AFTER.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(SYNC.format(name=name, schedule=schedule))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_cycle_fails_its_syncs_and_the_others_run(
    project: Path, retl_cli: Callable[..., Any], threads: str
) -> None:
    result = retl_cli("run", "--all", "--force", "--threads", threads, "--json")

    assert result.code == 1
    runs = {run["sync"]: run for run in result.json()["runs"]}
    assert {name: run["status"] for name, run in runs.items()} == {
        "a": "failed",
        "b": "failed",
        "c": "success",
        "d": "success",
    }
    assert "dependency cycle: a -> b -> a" in runs["a"]["error"]
    assert "dependency cycle: b -> a -> b" in runs["b"]["error"]
    assert [name for name in runs if name in "cd"] == ["c", "d"]  # d after c
