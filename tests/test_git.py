"""What git says about a sync file: the commit a run used, and the file's history."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.errors import UsageError
from reverse_etl.git import FileVersion, changed_since, file_history, file_version

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
    result = subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    return result.stdout.strip()


@pytest.fixture(autouse=True)
def isolated_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own git configuration out of these tests."""
    config = tmp_path / "gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.name", "Ada Lovelace")
    git(root, "config", "user.email", "ada@example.com")
    git(root, "config", "commit.gpgsign", "false")
    (root / "syncs").mkdir()
    return root


def commit(repo: Path, message: str, *paths: str, date: str | None = None) -> str:
    git(repo, "add", *paths)
    git(repo, "commit", "-q", "-m", message, date=date)
    return git(repo, "rev-parse", "HEAD")


def test_a_committed_unchanged_file_has_its_commit_and_is_clean(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    sha = commit(repo, "add crm sync", "syncs/crm.yml")
    assert file_version(sync) == FileVersion(commit=sha, dirty=False)


def test_the_commit_is_the_last_one_that_touched_the_file(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    sha = commit(repo, "add crm sync", "syncs/crm.yml")
    (repo / "README.md").write_text("hello\n")
    commit(repo, "readme", "README.md")
    assert file_version(sync).commit == sha


def test_a_modified_file_is_dirty(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    sha = commit(repo, "add crm sync", "syncs/crm.yml")
    sync.write_text("mode: insert\n")
    assert file_version(sync) == FileVersion(commit=sha, dirty=True)
    git(repo, "add", "syncs/crm.yml")  # staged but not committed is still dirty
    assert file_version(sync) == FileVersion(commit=sha, dirty=True)


def test_an_untracked_file_has_no_commit_and_is_dirty(repo: Path) -> None:
    (repo / "README.md").write_text("hello\n")
    commit(repo, "readme", "README.md")
    sync = repo / "syncs" / "new.yml"
    sync.write_text("mode: upsert\n")
    assert file_version(sync) == FileVersion(commit=None, dirty=True)


def test_an_ignored_file_has_no_commit_and_is_dirty(repo: Path) -> None:
    (repo / ".gitignore").write_text("syncs/local_*.yml\n")
    commit(repo, "ignore local syncs", ".gitignore")
    sync = repo / "syncs" / "local_test.yml"
    sync.write_text("mode: upsert\n")
    assert file_version(sync) == FileVersion(commit=None, dirty=True)


def test_a_file_in_a_repository_without_commits_is_dirty(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    assert file_version(sync) == FileVersion(commit=None, dirty=True)


def test_a_relative_path_is_read_from_the_working_directory(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "syncs" / "crm.yml").write_text("mode: upsert\n")
    sha = commit(repo, "add crm sync", "syncs/crm.yml")
    monkeypatch.chdir(repo / "syncs")
    assert file_version("crm.yml") == FileVersion(commit=sha, dirty=False)


def test_a_file_name_with_glob_characters_is_taken_literally(repo: Path) -> None:
    (repo / "syncs" / "a.yml").write_text("a\n")
    commit(repo, "a", "syncs/a.yml")
    odd = repo / "syncs" / "*.yml"
    odd.write_text("odd\n")
    assert file_version(odd) == FileVersion(commit=None, dirty=True)


def test_outside_a_repository_there_is_no_version(tmp_path: Path) -> None:
    sync = tmp_path / "loose" / "crm.yml"
    sync.parent.mkdir()
    sync.write_text("mode: upsert\n")
    assert file_version(sync) == FileVersion(commit=None, dirty=False)
    assert file_history(sync) == []


def test_without_git_installed_nothing_raises(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    commit(repo, "add crm sync", "syncs/crm.yml")
    monkeypatch.setenv("PATH", str(repo / "no-such-bin"))
    assert file_version(sync) == FileVersion(commit=None, dirty=False)
    assert file_history(sync) == []


def test_history_lists_commits_newest_first_with_author_date_and_message(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: insert\n")
    first = commit(repo, "add crm sync", "syncs/crm.yml", date="2026-01-02T10:00:00+01:00")
    (repo / "README.md").write_text("hello\n")
    commit(repo, "readme", "README.md")
    sync.write_text("mode: upsert\n")
    second = commit(
        repo,
        "crm: switch to upsert\n\nThe CRM team asked for updates too.",
        "syncs/crm.yml",
        date="2026-02-03T04:05:06+00:00",
    )

    history = file_history(sync)

    assert [c.commit for c in history] == [second, first]
    newest = history[0]
    assert newest.author == "Ada Lovelace" and newest.email == "ada@example.com"
    assert newest.message == "crm: switch to upsert\n\nThe CRM team asked for updates too."
    assert newest.subject == "crm: switch to upsert"
    assert newest.date.isoformat() == "2026-02-03T04:05:06+00:00"
    assert history[1].date.isoformat() == "2026-01-02T10:00:00+01:00"


def test_history_follows_renames_and_honours_the_limit(repo: Path) -> None:
    old = repo / "syncs" / "contacts.yml"
    old.write_text("mode: upsert\nbatch_size: 500\n")
    first = commit(repo, "add contacts sync", "syncs/contacts.yml")
    git(repo, "mv", "syncs/contacts.yml", "syncs/crm.yml")
    renamed = commit(repo, "rename contacts to crm", "syncs")
    new = repo / "syncs" / "crm.yml"
    new.write_text("mode: upsert\nbatch_size: 100\n")
    third = commit(repo, "smaller batches", "syncs/crm.yml")

    assert [c.commit for c in file_history(new)] == [third, renamed, first]
    assert [c.commit for c in file_history(new, limit=2)] == [third, renamed]
    assert file_history(new, limit=0) == []


def test_history_of_an_uncommitted_file_is_empty(repo: Path) -> None:
    sync = repo / "syncs" / "crm.yml"
    sync.write_text("mode: upsert\n")
    assert file_history(sync) == []


SQL_RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  files:
    type: file
    path: out
"""
SQL_SYNC = """warehouse: memory
source:
  file: sql/contacts.sql
destination:
  name: files
  object: contacts
mode: insert
primary_key: id
mapping:
  id: id
"""


@pytest.fixture
def no_retl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RETL_* variables from the developer's shell (GIT_* ones are set above)."""
    for key in list(os.environ):
        if key.startswith("RETL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def sql_project(repo: Path) -> Path:
    """A committed project whose sync reads its query from sql/contacts.sql; .retl/ ignored."""
    (repo / "retl.yml").write_text(SQL_RETL_YML)
    (repo / ".gitignore").write_text(".retl/\nout/\n")
    (repo / "sql").mkdir()
    (repo / "sql" / "contacts.sql").write_text("select 1 as id\n")
    (repo / "syncs" / "contacts.yml").write_text(SQL_SYNC)
    commit(repo, "add contacts sync", ".", date="2026-01-02T10:00:00+00:00")
    return repo


def test_editing_only_the_sql_file_makes_the_run_dirty(
    sql_project: Path, retl_cli: Any, no_retl_env: None
) -> None:
    first = retl_cli("run", "contacts", "--yes", "--project-dir", str(sql_project))
    assert first.code == 0, first.err
    (sql_project / "sql" / "contacts.sql").write_text("select 2 as id\n")
    second = retl_cli("run", "contacts", "--yes", "--project-dir", str(sql_project))
    assert second.code == 0, second.err

    runs = retl_cli("runs", "contacts", "--json", "--project-dir", str(sql_project)).json()["runs"]
    head = git(sql_project, "rev-parse", "HEAD")
    assert [(r["git_commit"], r["git_dirty"]) for r in runs] == [(head, True), (head, False)]


def test_the_commit_of_a_run_is_the_last_one_that_changed_the_sql_file(
    sql_project: Path, retl_cli: Any, no_retl_env: None
) -> None:
    (sql_project / "sql" / "contacts.sql").write_text("select 2 as id\n")
    sql_commit = commit(sql_project, "contacts: new id", "sql", date="2026-02-03T00:00:00+00:00")
    assert retl_cli("run", "contacts", "--yes", "--project-dir", str(sql_project)).code == 0
    runs = retl_cli("runs", "contacts", "--json", "--project-dir", str(sql_project)).json()["runs"]
    assert (runs[0]["git_commit"], runs[0]["git_dirty"]) == (sql_commit, False)


def test_history_lists_the_commits_of_the_sync_file_and_its_sql_file(
    sql_project: Path, retl_cli: Any, no_retl_env: None
) -> None:
    (sql_project / "sql" / "contacts.sql").write_text("select 2 as id\n")
    commit(sql_project, "contacts: only the query", "sql", date="2026-02-03T00:00:00+00:00")
    (sql_project / "README.md").write_text("unrelated\n")
    commit(sql_project, "readme", "README.md", date="2026-03-04T00:00:00+00:00")

    shown = retl_cli("history", "contacts", "--json", "--project-dir", str(sql_project))

    assert shown.code == 0, shown.err
    subjects = [c["message"] for c in shown.json()["commits"]]
    assert subjects == ["contacts: only the query", "add contacts sync"]


def test_changed_since_lists_committed_modified_and_new_files_but_not_unchanged_ones(
    repo: Path,
) -> None:
    for name in ("same.yml", "edited.yml", "committed.yml"):
        (repo / "syncs" / name).write_text("mode: upsert\n")
    commit(repo, "three syncs", "syncs")
    git(repo, "branch", "base")
    (repo / "syncs" / "committed.yml").write_text("mode: insert\n")
    commit(repo, "change one", "syncs/committed.yml")
    (repo / "syncs" / "edited.yml").write_text("mode: insert\n")
    (repo / "syncs" / "new.yml").write_text("mode: insert\n")

    changed = changed_since(repo, "base")

    syncs = (repo / "syncs").resolve()
    assert changed == {syncs / "committed.yml", syncs / "edited.yml", syncs / "new.yml"}


def test_changed_since_an_unknown_ref_is_a_usage_error(repo: Path) -> None:
    (repo / "a.yml").write_text("a\n")
    commit(repo, "a", "a.yml")

    with pytest.raises(UsageError, match="unknown git ref 'nope'"):
        changed_since(repo, "nope")
