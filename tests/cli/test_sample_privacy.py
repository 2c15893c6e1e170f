"""Customer data leaves the machine only as configured (SPEC 6.7): `output.samples` in retl.yml
decides how sample records appear in `plan --json`, plan files, `run --json`, `preview --json`
and the Markdown of pull-request comments — `masked` by default, `none` or `full` — and a field a
sync lists under `pii:` is masked everywhere, even under `full` and on a terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SQL = "\"select 7 as id, 'jane.doe@example.com' as email, 'Jane Doe' as name, 41 as age\""
MAPPING = "  id: id\n  email: email\n"
RAW = ("jane.doe@example.com", "Jane Doe")


def project(make: Callable[[str], Path], *, samples: str | None = None, pii: str = "") -> Path:
    root = make(SQL)
    sync = root / "syncs" / "people.yml"
    sync.write_text(sync.read_text().replace(MAPPING, MAPPING + "  name: name\n  age: age\n") + pii)
    if samples is not None:
        retl_yml = root / "retl.yml"
        retl_yml.write_text(retl_yml.read_text() + f"output:\n  samples: {samples}\n")
    return root


def no_raw_value(text: str) -> None:
    for value in RAW:
        assert value not in text


def test_machine_output_masks_every_sample_value_by_default(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    project(local_project)

    planned = retl_cli("plan", "--json")
    markdown = retl_cli("plan", "--format", "markdown")
    saved = retl_cli("plan", "--out", "plan.json")
    preview = retl_cli("preview", "people", "--json")
    ran = retl_cli("run", "people", "--yes", "--json")

    assert planned.code == 0, planned.err
    samples = planned.json()["syncs"][0]["samples"]
    assert samples == {
        "create": [{"id": "***", "email": "j***@e***.com", "name": "J***", "age": "***"}]
    }
    assert "| `***` | `j***@e***.com` | `J***` | `***` |" in markdown.out
    assert "values masked" in markdown.out
    assert saved.code == 0, saved.err
    for text in (planned.out, markdown.out, Path("plan.json").read_text(), preview.out, ran.out):
        no_raw_value(text)
    assert preview.json()["records"][0]["email"] == "j***@e***.com"
    assert ran.code == 0, ran.err
    assert ran.json()["runs"][0]["counts"]["create"] == 1


def test_samples_none_shows_counts_and_no_record(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    project(local_project, samples="none")

    planned = retl_cli("plan", "--json")
    markdown = retl_cli("plan", "--format", "markdown")

    document = planned.json()["syncs"][0]
    assert document["samples"] == {} and document["counts"]["create"] == 1
    assert "Sample records" not in markdown.out
    no_raw_value(markdown.out)


def test_samples_full_shows_values_but_pii_fields_stay_masked(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    project(local_project, samples="full", pii="pii: [email]\n")

    planned = retl_cli("plan", "--json")
    markdown = retl_cli("plan", "--format", "markdown")

    assert planned.code == 0, planned.err
    record = planned.json()["syncs"][0]["samples"]["create"][0]
    assert record == {"id": 7, "email": "j***@e***.com", "name": "Jane Doe", "age": 41}
    assert "jane.doe@example.com" not in markdown.out and "Jane Doe" in markdown.out


def test_a_terminal_shows_values_except_pii_fields(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    project(local_project, pii="pii: [name]\n")

    planned = retl_cli("plan")
    preview = retl_cli("preview", "people")

    for shown in (planned.out, preview.out):
        assert "jane.doe@example.com" in shown
        assert "Jane Doe" not in shown and "J***" in shown


def test_a_pii_entry_must_name_a_mapped_field(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    project(local_project, pii="pii: [phone]\n")

    result = retl_cli("validate", "--json")

    assert result.code == 1
    (problem,) = result.json()["problems"]
    assert problem["file"] == "syncs/people.yml" and problem["field"] == "pii"
    assert "'phone'" in problem["message"] and problem["line"] == 14


@pytest.mark.parametrize("policy", ["secret", "yes"])
def test_an_unknown_samples_setting_is_a_config_error(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any], policy: str
) -> None:
    project(local_project, samples=policy)

    result = retl_cli("validate", "--json")

    assert result.code != 0
    problems = json.loads(result.out)["problems"]
    assert any(p["file"] == "retl.yml" and p["field"] == "output.samples" for p in problems)


def test_pii_is_no_change_of_what_a_run_sends(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    root = project(local_project)
    assert retl_cli("run", "people", "--yes").code == 0
    sync = root / "syncs" / "people.yml"
    sync.write_text(sync.read_text() + "pii: [email]\n")

    planned = retl_cli("plan", "--json").json()["syncs"][0]

    assert planned["config_changed"] is False
    assert planned["counts"]["unchanged"] == 1


def test_a_duplicate_key_in_a_row_error_is_masked_like_the_samples(
    local_project: Callable[[str], Path], retl_cli: Callable[..., Any]
) -> None:
    local_project("\"select 'jane.doe@example.com' as id, 'x' as email from range(2)\"")

    planned = retl_cli("plan", "--json")
    markdown = retl_cli("plan", "--format", "markdown")
    terminal = retl_cli("plan")

    (error,) = planned.json()["syncs"][0]["row_errors"]
    assert error["key"] == "j***@e***.com" and error["rows"] == 2
    assert error["message"].startswith("duplicate primary key id = 'j***@e***.com' in 2 rows")
    for text in (planned.out, markdown.out):
        assert "jane.doe@example.com" not in text
    assert "jane.doe@example.com" in terminal.out
