"""`retl validate` as scripts and CI see it: --json, GitHub annotations, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  demo:
    url: duckdb:///warehouse.duckdb
destinations:
  app_db:
    type: postgres
    url: postgresql://retl@localhost/app
"""

SYNC = """\
warehouse: demo
source:
  sql: select id, email from customers
destination:
  name: app_db
  object: public.contacts
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
"""


def make_project(root: Path, **syncs: str) -> Path:
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(PROJECT)
    for name, text in syncs.items():
        (root / "syncs" / f"{name}.yml").write_text(text)
    return root


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    return make_project(
        tmp_path,
        contacts=SYNC.replace("warehouse: demo", "warehouse: dmo"),
        leads=SYNC + "batch_size: many\n",
    )


def validate(retl_cli: Callable[..., Any], *args: str) -> tuple[int, str, str]:
    result = retl_cli("validate", *args)
    return result.code, result.out, result.err


def test_json_output_is_one_document_in_the_spec_shape(
    broken: Path, retl_cli: Callable[..., Any]
) -> None:
    code, out, _ = validate(retl_cli, "--json", "--project-dir", str(broken))

    assert code == 1
    document = json.loads(out)  # stdout holds nothing else
    assert document == {
        "ok": False,
        "problems": [
            {
                "file": "syncs/contacts.yml",
                "line": 1,
                "field": "warehouse",
                "severity": "error",
                "message": "unknown warehouse 'dmo'",
                "hint": "did you mean 'demo'?",
            },
            {
                "file": "syncs/leads.yml",
                "line": 12,
                "field": "batch_size",
                "severity": "error",
                "message": "expected a whole number, got 'many'",
                "hint": None,
            },
        ],
    }


def test_json_output_of_a_valid_project(tmp_path: Path, retl_cli: Callable[..., Any]) -> None:
    root = make_project(tmp_path, contacts=SYNC)

    code, out, _ = validate(retl_cli, "--json", "--project-dir", str(root))

    assert code == 0
    assert json.loads(out) == {"ok": True, "problems": []}


def test_human_output_goes_to_stdout_only(broken: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, err = validate(retl_cli, "--project-dir", str(broken))

    assert code == 1
    assert err == ""  # `retl validate | less` shows the problems
    assert out.splitlines() == [
        "syncs/contacts.yml:1: warehouse: unknown warehouse 'dmo'",
        "    hint: did you mean 'demo'?",
        "syncs/leads.yml:12: batch_size: expected a whole number, got 'many'",
        "2 error(s) in 2 file(s)",
    ]


def test_github_actions_gets_error_annotations(
    broken: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")

    code, out, _ = validate(retl_cli, "--project-dir", str(broken))

    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("::")] == [
        "::error file=syncs/contacts.yml,line=1,title=warehouse::"
        "unknown warehouse 'dmo'%0Ahint: did you mean 'demo'?",
        "::error file=syncs/leads.yml,line=12,title=batch_size::"
        "expected a whole number, got 'many'",
    ]
    assert "syncs/contacts.yml:1: warehouse: unknown warehouse 'dmo'" in out


def test_no_annotations_outside_github_actions(
    broken: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "false")

    _, out, _ = validate(retl_cli, "--project-dir", str(broken))

    assert "::error" not in out


def test_a_valid_project_exits_0(tmp_path: Path, retl_cli: Callable[..., Any]) -> None:
    root = make_project(tmp_path, contacts=SYNC, leads=SYNC)

    code, out, err = validate(retl_cli, "--project-dir", str(root))

    assert code == 0
    assert err == ""
    assert out.strip() == "ok: retl.yml and 2 sync(s) are valid"


def test_only_the_named_syncs_are_validated(broken: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, _ = validate(retl_cli, "leads", "--project-dir", str(broken))

    assert code == 1
    assert "syncs/leads.yml" in out
    assert "syncs/contacts.yml" not in out


def test_select_patterns_pick_syncs(broken: Path, retl_cli: Callable[..., Any]) -> None:
    code, out, _ = validate(retl_cli, "--select", "cont*", "--project-dir", str(broken))

    assert code == 1
    assert "syncs/contacts.yml" in out
    assert "syncs/leads.yml" not in out


def test_an_unknown_sync_name_is_a_usage_error(broken: Path, retl_cli: Callable[..., Any]) -> None:
    code, _, err = validate(retl_cli, "contact", "--project-dir", str(broken))

    assert code == 2
    assert "no sync named 'contact'" in err
    assert "did you mean 'contacts'?" in err


def test_the_project_is_found_from_the_working_directory(
    broken: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(broken / "syncs")

    code, out, _ = validate(retl_cli)

    assert code == 1
    assert "syncs/contacts.yml:1: warehouse: unknown warehouse 'dmo'" in out


def test_retl_project_dir_names_the_project(
    broken: Path,
    tmp_path_factory: pytest.TempPathFactory,
    retl_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    monkeypatch.setenv("RETL_PROJECT_DIR", str(broken))

    code, out, _ = validate(retl_cli)

    assert code == 1
    assert "syncs/leads.yml:12" in out


def test_no_retl_yml_exits_2(
    tmp_path: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    code, out, err = validate(retl_cli)

    assert code == 2
    assert out == ""
    assert "error: no retl.yml found in" in err


def test_no_retl_yml_exits_2_as_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETL_")}

    result = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "validate", "--project-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"error: no retl.yml in {tmp_path.resolve()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_stdout_stays_pure_as_a_real_process(broken: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETL_", "GITHUB_"))}
    env["GITHUB_ACTIONS"] = "true"

    result = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "validate", "--json", "--project-dir", str(broken)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert [p["field"] for p in document["problems"]] == ["warehouse", "batch_size"]


def test_github_annotations_escape_percent_and_newlines_in_message_and_properties(
    tmp_path: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project(tmp_path, contacts=SYNC.replace("warehouse: demo", "warehouse: '50%,a:b'"))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")

    _, out, _ = validate(retl_cli, "--project-dir", str(root))

    assert [line for line in out.splitlines() if line.startswith("::")] == [
        "::error file=syncs/contacts.yml,line=1,title=warehouse::"
        "unknown warehouse '50%25,a:b'%0Ahint: warehouses defined in retl.yml: demo",
    ]


def test_a_nul_byte_in_a_sync_file_is_a_problem_at_its_line(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    make_project(tmp_path, contacts=SYNC.replace("from customers", "from customers\x00"))

    code, out, err = validate(retl_cli, "--json", "--project-dir", str(tmp_path))

    assert code == 1
    (problem,) = json.loads(out)["problems"]
    assert (problem["file"], problem["line"]) == ("syncs/contacts.yml", 3)
    assert "U+0000" in problem["message"] and "bug" not in err


def test_a_fifo_among_the_sync_files_is_skipped_with_a_warning(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    make_project(tmp_path, contacts=SYNC)
    os.mkfifo(tmp_path / "syncs" / "x.yml")  # opening it would wait for a writer forever

    code, out, _ = validate(retl_cli, "--json", "--project-dir", str(tmp_path))

    assert code == 0
    (problem,) = json.loads(out)["problems"]
    assert problem["file"] == "syncs/x.yml" and problem["severity"] == "warning"
    assert "not a regular file" in problem["message"]
