"""`retl clone SYNC NEW`: a copy of the sync file that keeps its comments and layout, with the
destination swapped when asked, refused for a bad name or an existing file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config import load_project
from reverse_etl.errors import ConfigError
from reverse_etl.project.clone import replace_scalars

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
# Contacts into the app. Owned by the growth team.
warehouse: demo
source:
  sql: select id, email from customers   # the model is analytics.customers
destination:
  name: app_db          # production
  object: contacts
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    (tmp_path / "syncs" / "contacts.yml").write_text(SYNC)
    return tmp_path


def run(retl_cli: Callable[..., Any], *args: str) -> tuple[int, str, str]:
    result = retl_cli(*args)
    return result.code, result.out, result.err


def test_clone_copies_the_file_byte_for_byte(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, err = run(
        retl_cli, "clone", "contacts", "contacts_copy", "--project-dir", str(project)
    )

    assert code == 0, err
    assert "wrote syncs/contacts_copy.yml (a copy of contacts)" in out
    assert (project / "syncs" / "contacts_copy.yml").read_text() == SYNC
    assert load_project(project).syncs["contacts_copy"].ok


def test_clone_points_the_copy_at_another_destination_keeping_comments(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    code, _, err = run(
        retl_cli,
        "clone",
        "contacts",
        "contacts_sandbox",
        "--destination",
        "sandbox",
        "--object",
        "test_contacts",
        "--project-dir",
        str(project),
    )

    assert code == 0, err
    expected = SYNC.replace("  name: app_db", "  name: sandbox").replace(
        "object: contacts", "object: test_contacts"
    )
    assert (project / "syncs" / "contacts_sandbox.yml").read_text() == expected
    sync = load_project(project).syncs["contacts_sandbox"]
    assert sync.config is not None
    assert (sync.config.destination.name, sync.config.destination.object) == (
        "sandbox",
        "test_contacts",
    )


def test_flow_style_and_values_that_need_quotes(tmp_path: Path) -> None:
    text = 'destination: {name: app_db, object: "contacts"}  # note\nmode: upsert\n'

    replaced = replace_scalars(
        text,
        "syncs/a.yml",
        {("destination", "name"): "true", ("destination", "object"): "odd: name #1"},
    )

    assert replaced == 'destination: {name: "true", object: "odd: name #1"}  # note\nmode: upsert\n'


def test_a_missing_destination_key_cannot_be_replaced() -> None:
    with pytest.raises(ConfigError, match=r"has no destination\.object value"):
        replace_scalars(
            "destination:\n  name: a\n", "syncs/a.yml", {("destination", "object"): "b"}
        )


def test_an_existing_file_is_refused_without_force(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    (project / "syncs" / "other.yml").write_text("# keep me\n")

    code, _, err = run(retl_cli, "clone", "contacts", "other", "--project-dir", str(project))

    assert code == 1
    assert "syncs/other.yml already exists" in err
    assert "--force" in err
    assert (project / "syncs" / "other.yml").read_text() == "# keep me\n"


def test_force_overwrites(project: Path, retl_cli: Callable[..., Any]) -> None:
    (project / "syncs" / "other.yml").write_text("# old\n")

    code, out, _ = run(
        retl_cli, "clone", "contacts", "other", "--force", "--json", "--project-dir", str(project)
    )

    assert code == 0
    assert json.loads(out) == {
        "sync": "other",
        "file": "syncs/other.yml",
        "overwritten": True,
        "schedule": "manual",
        "schedule_was": None,
        "ok": True,
        "problems": [],
    }
    assert (project / "syncs" / "other.yml").read_text() == SYNC


@pytest.mark.parametrize("name", ["Contacts", "-x", "a.b", "has space", "contacts"])
def test_an_invalid_or_same_name_is_a_usage_error(
    project: Path, retl_cli: Callable[..., Any], name: str
) -> None:
    code, _, err = run(retl_cli, "clone", "contacts", name, "--project-dir", str(project))

    assert code == 2
    assert name in err
    assert sorted(p.name for p in (project / "syncs").iterdir()) == ["contacts.yml"]


def test_an_unknown_sync_suggests_a_name(project: Path, retl_cli: Callable[..., Any]) -> None:
    code, _, err = run(retl_cli, "clone", "contact", "x", "--project-dir", str(project))

    assert code == 2
    assert "no sync named 'contact'" in err
    assert "did you mean 'contacts'?" in err


def test_the_new_syncs_problems_are_printed_and_exit_1(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    code, out, _ = run(
        retl_cli,
        "clone",
        "contacts",
        "contacts_b",
        "--destination",
        "sandbx",
        "--project-dir",
        str(project),
    )

    assert code == 1
    assert (project / "syncs" / "contacts_b.yml").exists()
    assert "syncs/contacts_b.yml:6: destination.name: unknown destination 'sandbx'" in out
    assert "did you mean 'sandbox'?" in out
    assert "syncs/contacts.yml" not in out  # only the new sync's problems


@pytest.mark.parametrize(
    "schedule", ['schedule: "*/15 * * * *"\n', "schedule:\n  after: [contacts]\n"]
)
def test_a_clone_starts_manual_so_run_all_leaves_it_alone(
    project: Path, retl_cli: Callable[..., Any], schedule: str
) -> None:
    (project / "syncs" / "contacts.yml").write_text(SYNC + schedule)

    code, out, err = run(retl_cli, "clone", "contacts", "copy", "--project-dir", str(project))

    assert code == 0, err
    assert "schedule: manual" in out
    copied = load_project(project).syncs["copy"]
    assert copied.ok, copied.problems
    assert copied.config is not None and copied.config.schedule.is_manual
    assert "# Contacts into the app" in (project / "syncs" / "copy.yml").read_text()
    assert load_project(project).syncs["contacts"].config.schedule.describe() != "manual"
