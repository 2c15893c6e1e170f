"""A broken block of retl.yml stops only the syncs that use it; `retl validate` reports it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
  analytics:
    url: ${RETL_TEST_UNSET_WAREHOUSE_URL}
destinations:
  files:
    type: file
    path: out
  crm:
    type: postgres
    url: ${RETL_TEST_UNSET_CRM_URL}
"""
SYNC = """\
warehouse: {warehouse}
source:
  sql: select 1 as id
destination:
  name: {destination}
  object: contacts
mode: insert
primary_key: id
mapping:
  id: id
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    syncs = {
        "healthy": ("memory", "files"),
        "to_crm": ("memory", "crm"),
        "from_analytics": ("analytics", "files"),
    }
    for name, (warehouse, destination) in syncs.items():
        text = SYNC.format(warehouse=warehouse, destination=destination)
        (tmp_path / "syncs" / f"{name}.yml").write_text(text)
    return tmp_path


def test_a_sync_that_uses_no_broken_block_plans_and_runs(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    planned = retl_cli("plan", "healthy", "--json", "--project-dir", str(project))
    assert planned.code == 0, planned.err
    assert planned.json()["syncs"][0]["counts"]["create"] == 1

    ran = retl_cli("run", "healthy", "--yes", "--project-dir", str(project))
    assert ran.code == 0, ran.err
    assert (project / "out").is_dir()


@pytest.mark.parametrize(
    "sync, variable",
    [("to_crm", "RETL_TEST_UNSET_CRM_URL"), ("from_analytics", "RETL_TEST_UNSET_WAREHOUSE_URL")],
)
def test_a_sync_that_uses_a_broken_block_is_refused_with_its_problem(
    project: Path, retl_cli: Callable[..., Any], sync: str, variable: str
) -> None:
    result = retl_cli("plan", sync, "--project-dir", str(project))

    assert result.code == 1
    assert f"environment variable {variable} is not set" in result.err
    other = "RETL_TEST_UNSET_CRM_URL" if variable != "RETL_TEST_UNSET_CRM_URL" else "WAREHOUSE"
    assert other not in result.err


def test_validate_still_reports_every_broken_block(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("validate", "healthy", "--json", "--project-dir", str(project))

    assert result.code == 1
    problems = [(p["file"], p["field"], p["severity"]) for p in result.json()["problems"]]
    assert problems == [
        ("retl.yml", "warehouses.analytics.url", "error"),
        ("retl.yml", "destinations.crm.url", "error"),
    ]


def test_a_problem_outside_the_named_blocks_still_stops_every_sync(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    text = (project / "retl.yml").read_text()
    (project / "retl.yml").write_text(text + "state:\n  backend: nowhere\n")

    result = retl_cli("plan", "healthy", "--project-dir", str(project))

    assert result.code == 1
    assert "state.backend" in result.err
