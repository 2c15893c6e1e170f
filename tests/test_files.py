"""retl's local files are private: directories 0700, files 0600, written whole or not at all."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.files import private_dir, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def project(local_project: Callable[..., Path]) -> Path:
    return local_project()


def test_private_dir_creates_every_missing_level_0700(tmp_path: Path) -> None:
    private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700


def test_private_dir_tightens_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir(mode=0o755)
    private_dir(tmp_path / "open")
    assert mode(tmp_path / "open") == 0o700


def test_write_private_replaces_the_file_whole_at_0600(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old")
    target.chmod(0o644)
    write_private(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left


def test_a_run_leaves_only_private_directories_and_files_under_dot_retl(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    assert retl_cli("run", "people").code == 0
    assert retl_cli("status").code == 0

    retl = project / ".retl"
    paths = [retl, *retl.rglob("*")]
    assert {p.name for p in paths} >= {".retl", "retl.db", "state", "people.duckdb", "locks"}
    wrong = [
        f"{p.relative_to(project)} {mode(p):o}"
        for p in paths
        if mode(p) != (0o700 if p.is_dir() else 0o600)
    ]
    assert wrong == []


def test_files_an_older_retl_left_readable_are_tightened_by_the_next_run(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    assert retl_cli("run", "people").code == 0
    retl = project / ".retl"
    for path in [retl, *retl.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    assert retl_cli("run", "people").code == 0

    assert mode(retl / "retl.db") == 0o600
    assert mode(retl / "state" / "people.duckdb") == 0o600
    assert mode(retl / "locks") == 0o700
