"""`retl validate` warns when a scheduled sync has no alert channel (its failures would reach
nobody); `--strict` makes every warning an error (exit 1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config import load_project
from reverse_etl.validate import validate_project

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  demo:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: file
    path: out
alerts:
  ops:
    type: webhook
    url: ${OPS_URL}
"""
SYNC = """\
warehouse: demo
source:
  sql: select 1 as id
destination:
  name: app
  object: people
mode: upsert
primary_key: id
mapping:
  id: id
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPS_URL", "https://hooks.example.com/ops")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    syncs = {
        "cron_silent": 'schedule: "*/15 * * * *"\n',
        "after_silent": "schedule:\n  after: [cron_silent]\n",
        "cron_alerted": 'schedule: "0 * * * *"\nalerts: [ops]\n',
        "manual_silent": "schedule: manual\n",
        "default_silent": "",
    }
    for name, extra in syncs.items():
        (tmp_path / "syncs" / f"{name}.yml").write_text(SYNC + extra)
    return tmp_path


def test_scheduled_syncs_without_an_alert_channel_are_warned_at_their_schedule(
    project: Path,
) -> None:
    loaded = load_project(project)

    found = [p for p in validate_project(loaded, loaded.select()) if p.field == "alerts"]

    assert [(p.file, p.line, p.severity) for p in found] == [
        ("syncs/after_silent.yml", 11, "warning"),
        ("syncs/cron_silent.yml", 11, "warning"),
    ]
    assert found[1].message == (
        "scheduled sync (*/15 * * * *) has no alert channel: a failed run reaches nobody"
    )
    assert found[1].hint == "add alerts: [ops] (channels in retl.yml: ops)"


def test_warnings_keep_exit_0_and_strict_makes_them_errors(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    relaxed = retl_cli("validate", "--json")
    strict = retl_cli("validate", "--strict", "--json")
    strict_text = retl_cli("validate", "--strict")

    assert relaxed.code == 0 and relaxed.json()["ok"] is True
    assert {p["severity"] for p in relaxed.json()["problems"]} == {"warning"}
    assert strict.code == 1 and strict.json()["ok"] is False
    assert [p["severity"] for p in strict.json()["problems"]] == ["error", "error"]
    assert "2 error(s) in 2 file(s) (--strict: warnings count as errors)" in strict_text.out


def test_strict_passes_a_project_without_warnings(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("validate", "cron_alerted", "manual_silent", "--strict")

    assert result.code == 0
    assert "ok: retl.yml and 2 sync(s) are valid" in result.out
