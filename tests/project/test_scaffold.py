"""`init_project` writes a project that loads cleanly, and never clobbers a user's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverse_etl.config import load_project
from reverse_etl.errors import ProjectFilesExistError
from reverse_etl.project.scaffold import TEMPLATES, init_project, template_root


def test_every_template_ships_with_the_package() -> None:
    for name in TEMPLATES:
        assert template_root().joinpath(*name.split("/")).is_file(), name


def test_init_creates_the_directory_and_every_project_file(tmp_path: Path) -> None:
    root = tmp_path / "new" / "project"

    result = init_project(root)

    assert result.root == root.resolve()
    assert sorted(result.created) == sorted(TEMPLATES.values())
    assert result.overwritten == []
    for target in TEMPLATES.values():
        assert (root / target).is_file()
    assert ".retl/" in (root / ".gitignore").read_text().splitlines()


def test_new_project_loads_without_problems(tmp_path: Path) -> None:
    init_project(tmp_path)

    project = load_project(tmp_path, env={})

    assert [p.format() for p in project.all_problems] == []
    assert list(project.syncs) == ["example"]
    sync = project.syncs["example"]
    assert sync.ok
    assert sync.sql is not None and "values" in sync.sql


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "retl.yml").write_text("version: 1\n# mine\n")

    with pytest.raises(ProjectFilesExistError) as caught:
        init_project(tmp_path)

    assert "retl.yml" in caught.value.message
    assert caught.value.exit_code == 1
    assert caught.value.hint is not None and "--force" in caught.value.hint
    assert (tmp_path / "retl.yml").read_text() == "version: 1\n# mine\n"
    assert not (tmp_path / "syncs").exists()
    assert not (tmp_path / ".gitignore").exists()


def test_force_overwrites_the_project_files(tmp_path: Path) -> None:
    (tmp_path / "retl.yml").write_text("version: 1\n# mine\n")

    result = init_project(tmp_path, force=True)

    assert result.overwritten == ["retl.yml"]
    assert "retl.yml" not in result.created
    assert "# mine" not in (tmp_path / "retl.yml").read_text()


def test_existing_gitignore_is_kept_and_gains_only_missing_lines(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n.retl/")

    result = init_project(tmp_path)

    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert result.gitignore_updated
    assert ".gitignore" not in [*result.created, *result.overwritten]
    assert lines[:2] == ["node_modules/", ".retl/"]
    assert lines.count(".retl/") == 1
    assert "output/" in lines


def test_gitignore_already_complete_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text(".retl/\noutput/\nretl-report.html\n")

    result = init_project(tmp_path)

    assert not result.gitignore_updated
    assert (tmp_path / ".gitignore").read_text() == ".retl/\noutput/\nretl-report.html\n"


def test_init_refuses_a_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "not_a_dir"
    target.write_text("")

    with pytest.raises(ProjectFilesExistError):
        init_project(target)
