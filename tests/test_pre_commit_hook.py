"""`.pre-commit-hooks.yaml`: the `retl-validate` hook pre-commit installs from this repository.

pre-commit installs the repository as a Python package (language: python) and runs `entry`
once per commit that touches a matching file (pass_filenames: false: retl validates the whole
project, whose files refer to each other).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The keys pre-commit requires of a hook, and the ones this hook relies on.
REQUIRED = {"id", "name", "entry", "language"}


def run_entry(hook: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The hook's entry as pre-commit runs it: the installed console script, in the project."""
    command = shlex.split(hook["entry"])
    return subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def hook() -> dict[str, Any]:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(hooks, list)
    (found,) = [h for h in hooks if h["id"] == "retl-validate"]
    return dict(found)


def test_the_hook_is_defined_with_the_documented_keys(hook: dict[str, Any]) -> None:
    assert set(hook) >= REQUIRED
    assert hook["entry"] == "retl validate"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("retl.yml", True),
        ("syncs/customers_to_app.yml", True),
        ("syncs/contacts.yaml", True),
        ("sql/active_customers.sql", True),
        ("models/marts/customers.sql", True),
        ("README.md", False),
        ("syncs/notes.txt", False),
        ("examples/retl.yml.bak", False),
    ],
)
def test_the_hook_runs_for_project_files_only(
    hook: dict[str, Any], path: str, matches: bool
) -> None:
    assert bool(re.search(hook["files"], path)) is matches


def test_the_entry_command_passes_on_the_demo_project(hook: dict[str, Any]) -> None:
    done = run_entry(hook, ROOT)

    assert done.returncode == 0, done.stderr
    assert "ok: retl.yml and 5 sync(s) are valid" in done.stdout


def test_the_entry_command_fails_the_commit_on_a_broken_sync(
    hook: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  w:\n    url: duckdb:///:memory:\n"
        "destinations:\n  d:\n    type: file\n    path: out\n"
    )
    (tmp_path / "syncs" / "a.yml").write_text(
        "warehouse: w\nsource: {sql: select 1 as id}\ndestination: {name: d, object: a}\n"
        "mode: upsert\nprimary_key: id\nmapping: {id: id}\nbatch_sise: 5\n"
    )
    done = run_entry(hook, tmp_path)

    assert done.returncode == 1
    assert "syncs/a.yml:7: batch_sise" in done.stdout
