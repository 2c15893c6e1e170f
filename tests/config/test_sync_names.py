"""Sync names: the longest name validate accepts can run (its state files are named after it);
a longer one is a validation error, not a failure at run time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config.models import MAX_SYNC_NAME

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  files:
    type: file
    path: out
"""
SYNC = """\
warehouse: memory
source:
  sql: select 1 as id
destination:
  name: files
  object: contacts
mode: upsert
primary_key: id
mapping:
  id: id
"""


def project_with(root: Path, name: str) -> Path:
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(PROJECT)
    (root / "syncs" / f"{name}.yml").write_text(SYNC)
    return root


def test_a_sync_name_over_the_limit_fails_validate(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    name = "a" * 240
    root = project_with(tmp_path, name)

    result = retl_cli("validate", "--project-dir", str(root))

    assert result.code == 1
    assert result.out.splitlines()[:2] == [
        f"syncs/{name}.yml: sync name 'aaaaaaaaaaaaaaaaaaaa...' is 240 characters long; "
        "the limit is 100",
        "    hint: rename the file: its state files are named after it: choose a shorter name",
    ]


def test_a_sync_name_at_the_limit_runs_twice_and_keeps_its_state(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    name = "s" * MAX_SYNC_NAME
    root = project_with(tmp_path, name)

    assert retl_cli("validate", "--project-dir", str(root)).code == 0
    first = retl_cli("run", name, "--yes", "--json", "--project-dir", str(root))
    assert first.code == 0, first.err
    second = retl_cli("plan", name, "--json", "--project-dir", str(root))
    assert second.code == 0, second.err
    assert second.json()["syncs"][0]["counts"]["unchanged"] == 1


def test_clone_refuses_a_name_over_the_limit(tmp_path: Path, retl_cli: Callable[..., Any]) -> None:
    root = project_with(tmp_path, "contacts")

    result = retl_cli("clone", "contacts", "c" * 101, "--project-dir", str(root))

    assert result.code == 2
    assert "is 101 characters long; the limit is 100" in result.err
    assert not (root / "syncs" / f"{'c' * 101}.yml").exists()
