"""A warehouse that lists `roles` can only be used by one of them (SPEC §2.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RETL_YML = """version: 1
warehouses:
  restricted:
    url: "duckdb:///:memory:"
    roles: [analyst, ops]
destinations:
  files:
    type: file
    path: out
"""
SYNC = """warehouse: restricted
source:
  sql: select 1 as id, 'a' as name
destination:
  name: files
  object: people
mode: insert
primary_key: id
mapping:
  id: id
  name: name
"""


def retl(root: Path, *args: str, role: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RETL_ROLE"}
    if role is not None:
        env["RETL_ROLE"] = role
    return subprocess.run(
        [sys.executable, "-m", "reverse_etl", *args, "--project-dir", str(root)],
        capture_output=True,
        text=True,
        env=env,
    )


def make_project(root: Path) -> Path:
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(RETL_YML)
    (root / "syncs" / "people.yml").write_text(SYNC)
    return root


def test_a_run_by_another_role_is_refused_before_any_sql_runs(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    result = retl(root, "run", "people", "--json", role="marketing")
    assert result.returncode == 1
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "refused"
    assert "marketing" in run["error"]
    assert not (root / "out").exists()


def test_preview_and_plan_without_a_role_are_refused(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    for command in ("preview", "plan"):
        result = retl(root, command, "people")
        assert result.returncode == 1, command
        # preview fails as a command (stderr); plan reports each sync it could not plan (stdout)
        shown = result.stderr if command == "preview" else result.stdout
        assert "restricted" in shown
        assert "Traceback" not in result.stderr + result.stdout


def test_an_allowed_role_runs(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    result = retl(root, "run", "people", "--json", role="ops")
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "success"
    assert run["counts"]["create"] == 1
