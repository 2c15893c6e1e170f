"""`retl pause SYNC --reason` / `retl resume SYNC`: an operational pause kept in state with who,
when and why, honoured by `run SYNC`, `run --all` and `plan`, listed by `status`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml


@pytest.fixture
def project(tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two scheduled syncs (`crm`, `exports`) into JSON Lines files; git knows no user here."""
    monkeypatch.setenv("USER", "oncall-ann")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.gitconfig: the pause is by $USER
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    root = tmp_path / "project"
    (root / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {"files": {"type": "file", "path": "out", "format": "jsonl"}},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    for name in ("crm", "exports"):
        sync = {
            "warehouse": "wh",
            "source": {"sql": "select id, name from src"},
            "destination": {"name": "files", "object": name},
            "mode": "insert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
            "schedule": "*/5 * * * *",
        }
        (root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(sync))
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        con.execute("CREATE TABLE src AS SELECT range AS id, 'n' || range AS name FROM range(5)")
    finally:
        con.close()
    return root


REASON = "CRM incident #42: duplicates <b>"


def test_a_paused_sync_is_skipped_by_run_with_who_why_and_how_to_resume(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    paused = retl_cli("pause", "crm", "--reason", REASON, "--project-dir", str(project))
    run = retl_cli("run", "crm", "--json", "--project-dir", str(project))

    assert paused.code == 0 and "oncall-ann" in paused.out
    (outcome,) = run.json()["runs"]
    assert run.code == 0
    assert outcome["status"] == "skipped"
    assert "paused by oncall-ann" in outcome["error"] and REASON in outcome["error"]
    assert "retl resume crm" in outcome["hint"]
    assert not (project / "out" / "crm").exists()  # nothing was sent
    text = retl_cli("run", "crm", "--project-dir", str(project))
    assert "paused by oncall-ann" in text.out and "retl resume crm" in text.out


def test_run_all_skips_the_paused_sync_with_a_note_and_runs_the_others(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    retl_cli("pause", "crm", "--reason", REASON, "--project-dir", str(project))

    run = retl_cli("run", "--all", "--force", "--json", "--project-dir", str(project))

    statuses = {r["sync"]: (r["status"], r["error"]) for r in run.json()["runs"]}
    assert run.code == 0
    assert statuses["exports"] == ("success", None)
    assert statuses["crm"][0] == "skipped" and REASON in statuses["crm"][1]


def test_plan_shows_the_pause_in_a_banner_and_in_json(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    retl_cli("pause", "crm", "--reason", REASON, "--project-dir", str(project))

    text = retl_cli("plan", "crm", "--project-dir", str(project))
    (plan,) = retl_cli("plan", "crm", "--json", "--project-dir", str(project)).json()["syncs"]

    assert "paused by oncall-ann" in text.out + text.err
    assert "retl resume crm" in text.out + text.err
    assert plan["paused"] is True
    assert plan["pause"]["by"] == "oncall-ann" and plan["pause"]["reason"] == REASON


def test_status_lists_the_pause_and_resume_lifts_it(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    retl_cli("pause", "crm", "--reason", REASON, "--project-dir", str(project))

    status = retl_cli("status", "--json", "--project-dir", str(project)).json()["syncs"]
    table = retl_cli("status", "--project-dir", str(project))
    rows = {row["sync"]: row for row in status}
    assert rows["crm"]["paused"] is True and rows["crm"]["pause"]["reason"] == REASON
    assert rows["crm"]["next_due"] is None
    assert rows["exports"]["paused"] is False and rows["exports"]["pause"] is None
    assert "crm: paused by oncall-ann" in table.out and REASON in table.out

    resumed = retl_cli("resume", "crm", "--json", "--project-dir", str(project)).json()
    again = retl_cli("resume", "crm", "--project-dir", str(project))
    run = retl_cli("run", "crm", "--json", "--project-dir", str(project))

    assert resumed["resumed"] is True and resumed["pause"]["reason"] == REASON
    assert "was not paused" in again.out
    assert run.json()["runs"][0]["status"] == "success"


def test_pause_needs_a_reason_and_a_known_sync(project: Path, retl_cli: Callable[..., Any]) -> None:
    blank = retl_cli("pause", "crm", "--reason", "  ", "--project-dir", str(project))
    unknown = retl_cli("pause", "crmm", "--reason", "x", "--project-dir", str(project))
    missing = retl_cli("pause", "crm", "--project-dir", str(project))

    assert blank.code == 2 and "needs a reason" in blank.err
    assert unknown.code == 2 and "crmm" in unknown.err
    assert missing.code == 2 and "--reason" in missing.err


def test_the_engine_exposes_pause_resume_and_paused(project: Path) -> None:
    from reverse_etl import Engine, load_project

    engine = Engine(load_project(project))
    pause = engine.pause("exports", "backfill running", by="ops-bot")

    assert engine.paused("exports") == pause
    assert engine.plan(engine.sync("exports")).paused is True
    assert engine.run(engine.sync("exports")).status == "skipped"
    assert engine.resume("exports") == pause
    assert engine.paused("exports") is None
    assert engine.run(engine.sync("exports")).status == "success"
