"""`retl validate --base GIT_REF`: risky changes since a git ref are warnings at the line of
the key; they never change the exit code; a bad ref or no repository is exit 2."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config import load_project
from reverse_etl.errors import UsageError
from reverse_etl.validate.changes import changed_syncs, changes_since

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  demo:
    url: duckdb:///warehouse.duckdb
destinations:
  app_db:
    type: sql
    url: sqlite:///app.sqlite
  sandbox:
    type: sql
    url: sqlite:///sandbox.sqlite
"""

SYNC = """\
warehouse: demo
source:
  sql: select id, email from customers
destination:
  name: app_db
  object: contacts
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
on_removed: ignore
limits:
  max_deletes: 100
  max_delete_ratio: 0.1
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project committed on branch main with one sync, contacts."""
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    (tmp_path / "syncs" / "contacts.yml").write_text(SYNC)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.name", "Test")
    git(tmp_path, "config", "user.email", "test@example.com")
    git(tmp_path, "config", "commit.gpgsign", "false")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "contacts")
    return tmp_path


def warnings(root: Path, ref: str = "main") -> list[tuple[int | None, str, str]]:
    project = load_project(root)
    found = changes_since(project, project.select(), ref)
    assert all(p.severity == "warning" for p in found)
    return [(p.line, p.field, p.message) for p in found]


def edit(root: Path, old: str, new: str, name: str = "contacts") -> None:
    path = root / "syncs" / f"{name}.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_unchanged_project_has_no_warnings(repo: Path) -> None:
    assert warnings(repo) == []


def test_harmless_changes_are_not_reported(repo: Path) -> None:
    edit(repo, "  max_deletes: 100", "  max_deletes: 10")
    edit(repo, "mode: upsert", "mode: update")
    (repo / "syncs" / "leads.yml").write_text(SYNC)

    assert warnings(repo) == []


def test_on_removed_changed_to_delete(repo: Path) -> None:
    edit(repo, "on_removed: ignore", "on_removed: delete\nallow_destructive: true")

    assert warnings(repo) == [
        (12, "on_removed", "on_removed changed from ignore to delete since main"),
        (13, "allow_destructive", "allow_destructive turned on since main"),
    ]


def test_mode_changed_to_delete(repo: Path) -> None:
    edit(repo, "mode: upsert", "mode: delete")

    assert warnings(repo) == [(7, "mode", "mode changed from upsert to delete since main")]


def test_a_new_destructive_sync(repo: Path) -> None:
    (repo / "syncs" / "purge.yml").write_text(
        SYNC.replace("mode: upsert", "mode: delete") + "allow_destructive: true\n"
    )

    project = load_project(repo)
    found = changes_since(project, project.select(), "main")

    assert [(p.file, p.line, p.field, p.message) for p in found] == [
        ("syncs/purge.yml", 7, "mode", "new sync with mode delete (not in main)")
    ]
    assert found[0].hint == "review: this run may delete records"


def test_limits_raised_or_removed(repo: Path) -> None:
    edit(repo, "  max_deletes: 100\n  max_delete_ratio: 0.1\n", "  max_deletes: 5000\n")
    edit(repo, "limits:\n", "limits:\n  max_row_error_ratio: 0.5\n")

    assert warnings(repo) == [
        (
            14,
            "limits.max_row_error_ratio",
            "limits.max_row_error_ratio raised from 0.1 to 0.5 since main",
        ),
        (15, "limits.max_deletes", "limits.max_deletes raised from 100 to 5000 since main"),
        (
            13,
            "limits.max_delete_ratio",
            "limits.max_delete_ratio raised from 0.1 to 0.5 (the default) since main",
        ),
    ]


def test_a_limit_set_to_null_is_removed(repo: Path) -> None:
    edit(repo, "  max_deletes: 100", "  max_deletes: null")

    assert warnings(repo) == [
        (14, "limits.max_deletes", "limits.max_deletes removed since main (was 100; no limit now)")
    ]


def test_destination_changed(repo: Path) -> None:
    edit(repo, "  name: app_db\n  object: contacts", "  name: sandbox\n  object: test_contacts")

    assert warnings(repo) == [
        (5, "destination.name", "destination.name changed from app_db to sandbox since main"),
        (
            6,
            "destination.object",
            "destination.object changed from contacts to test_contacts since main",
        ),
    ]


def test_a_changed_primary_key_is_a_risky_change(repo: Path) -> None:
    edit(repo, "primary_key: id", "primary_key: email")

    project = load_project(repo)
    (found,) = changes_since(project, project.select(), "main")

    assert (found.line, found.field, found.message) == (
        8,
        "primary_key",
        "primary_key changed from id to email since main",
    )
    assert found.severity == "warning"
    assert found.hint is not None
    assert "every row counts as new" in found.hint and "looks removed" in found.hint


def test_compares_with_any_commit(repo: Path) -> None:
    edit(repo, "mode: upsert", "mode: delete\nallow_destructive: true")
    git(repo, "commit", "-q", "-am", "delete")

    assert warnings(repo, "HEAD") == []
    assert [w[1] for w in warnings(repo, "HEAD~1")] == ["mode", "allow_destructive"]


def test_a_bad_ref_is_a_usage_error(repo: Path) -> None:
    project = load_project(repo)

    with pytest.raises(UsageError, match="unknown git ref 'nope'"):
        changes_since(project, project.select(), "nope")


def test_outside_git_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "retl.yml").write_text(PROJECT)
    project = load_project(tmp_path)

    with pytest.raises(UsageError, match="is not in a git repository"):
        changes_since(project, [], "main")


# --- the command line -------------------------------------------------------------------------


def validate(retl_cli: Callable[..., Any], *args: str) -> tuple[int, str, str]:
    result = retl_cli("validate", *args)
    return result.code, result.out, result.err


def test_warnings_are_printed_and_exit_0(repo: Path, retl_cli: Callable[..., Any]) -> None:
    edit(repo, "on_removed: ignore", "on_removed: delete\nallow_destructive: true")

    code, out, err = validate(retl_cli, "--base", "main", "--project-dir", str(repo))

    assert code == 0
    assert err == ""
    assert out.splitlines() == [
        "syncs/contacts.yml:12: on_removed: on_removed changed from ignore to delete since main",
        "    hint: review: this run may delete records",
        "syncs/contacts.yml:13: allow_destructive: allow_destructive turned on since main",
        "    hint: review: deletes are now allowed for this sync",
        "ok: retl.yml and 1 sync(s) are valid (2 warning(s))",
    ]


def test_json_keeps_ok_true_with_only_warnings(repo: Path, retl_cli: Callable[..., Any]) -> None:
    edit(repo, "mode: upsert", "mode: delete\nallow_destructive: true")

    code, out, _ = validate(retl_cli, "--base", "main", "--json", "--project-dir", str(repo))

    assert code == 0
    document = json.loads(out)
    assert document["ok"] is True
    assert document["problems"][0] == {
        "file": "syncs/contacts.yml",
        "line": 7,
        "field": "mode",
        "severity": "warning",
        "message": "mode changed from upsert to delete since main",
        "hint": "review: this run may delete records",
    }


def test_errors_still_fail_alongside_warnings(repo: Path, retl_cli: Callable[..., Any]) -> None:
    edit(repo, "mode: upsert", "mode: delete")  # without allow_destructive: an error

    code, out, _ = validate(retl_cli, "--base", "main", "--json", "--project-dir", str(repo))

    assert code == 1
    severities = sorted(p["severity"] for p in json.loads(out)["problems"])
    assert severities == ["error", "warning"]


def test_github_actions_gets_warning_annotations(
    repo: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    edit(repo, "mode: upsert", "mode: delete\nallow_destructive: true")

    _, out, _ = validate(retl_cli, "--base", "main", "--project-dir", str(repo))

    assert next(line for line in out.splitlines() if line.startswith("::")) == (
        "::warning file=syncs/contacts.yml,line=7,title=mode::"
        "mode changed from upsert to delete since main%0Ahint: review: this run may delete records"
    )


def test_a_bad_ref_exits_2(repo: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, err = validate(retl_cli, "--base", "nope", "--project-dir", str(repo))

    assert code == 2
    assert out == ""
    assert "error: unknown git ref 'nope'" in err
    assert "Traceback" not in err


def test_no_repository_exits_2(tmp_path: Path, retl_cli: Callable[..., Any]) -> None:
    (tmp_path / "retl.yml").write_text(PROJECT)

    code, _, err = validate(retl_cli, "--base", "main", "--project-dir", str(tmp_path))

    assert code == 2
    assert "is not in a git repository" in err


def test_changed_syncs_says_in_words_what_changed(repo: Path) -> None:
    edit(repo, "  object: contacts\n", "  object: contacts_v2\n")
    edit(repo, "  email: email\n", '  mail: email\n  name: "{{ email | lower }}"\n')
    edit(repo, "  max_deletes: 100\n", "  max_deletes: 500\n")
    edit(repo, "on_removed: ignore\n", "on_removed: delete\nallow_destructive: true\n")
    (repo / "syncs" / "contacts.yml").write_text(
        (repo / "syncs" / "contacts.yml").read_text() + "paused: true\n"
    )
    project = load_project(repo)

    changes = changed_syncs(project, "main")

    assert [s.name for s in changes.syncs] == ["contacts"]
    change = changes.changes["contacts"]
    assert change.reasons == ["sync file"]
    assert change.destructive
    assert change.changes == [
        "on_removed ignore → delete",
        "mapping: + mail, + name, − email",
        "destination.object contacts → contacts_v2",
        "allow_destructive false → true",
        "limits.max_deletes 100 → 500",
        "paused false → true",
    ]


def test_changed_syncs_sees_through_comments_and_lists_new_and_removed_syncs(repo: Path) -> None:
    path = repo / "syncs" / "contacts.yml"
    path.write_text("# who owns this: the CRM team\n" + path.read_text())
    (repo / "syncs" / "erasure.yml").write_text(
        SYNC.replace("mode: upsert", "mode: delete\nallow_destructive: true")
        .replace("  email: email\n", "")
        .replace("on_removed: ignore\n", "")
    )
    project = load_project(repo)

    changes = changed_syncs(project, "main")

    assert changes.changes["contacts"].changes == [
        "no setting changed (comments or formatting only)"
    ]
    erasure = changes.changes["erasure"]
    assert erasure.new and erasure.destructive
    assert erasure.changes == ["new sync (not in main)"]
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "erasure")
    path.unlink()

    assert changed_syncs(load_project(repo), "HEAD").removed == ["contacts"]
