"""State that went missing is never taken for a first run: a deleted snapshot whose sync the run
log shows delivering refuses the run (the two ways forward named), and a lost run log, which
held the pauses, is said out loud."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SQL = "\"select i as id, 'u' || i || '@x.org' as email from range(1, 4) t(i)\""


@pytest.fixture
def project(local_project: Callable[[str], Path], retl_cli: Callable[..., Any]) -> Path:
    root = local_project(SQL)
    assert retl_cli("run", "people").code == 0
    return root


def test_a_deleted_state_file_refuses_the_run_and_names_the_ways_forward(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    (project / ".retl" / "state" / "people.duckdb").unlink()

    result = retl_cli("run", "people", "--json")

    assert result.code == 1
    (run,) = result.json()["runs"]
    assert run["status"] == "refused"
    assert "state of sync 'people' is gone (.retl/state/people.duckdb is missing)" in run["error"]
    assert "left 3 delivered record(s)" in run["error"]
    assert "--full-resync" in run["hint"] and "backup" in run["hint"]
    assert run["counts"]["create"] == 0
    planned = retl_cli("plan", "people", "--json").json()["syncs"][0]
    assert planned["refused"] == run["error"]
    assert retl_cli("run", "people").code == 1  # a refused run left no empty state behind


def test_full_resync_or_a_state_reset_sends_every_row_again_on_purpose(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    state = project / ".retl" / "state" / "people.duckdb"
    state.unlink()

    resync = retl_cli("run", "people", "--full-resync", "--json")
    assert resync.code == 0, resync.err
    assert resync.json()["runs"][0]["counts"]["create"] == 3

    state.unlink()
    assert retl_cli("state", "reset", "people", "--yes").code == 0
    again = retl_cli("run", "people", "--json")
    assert again.code == 0, again.err
    assert again.json()["runs"][0]["counts"]["create"] == 3


def test_a_lost_run_log_is_a_warning_that_pauses_are_gone(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    assert retl_cli("pause", "people", "--reason", "incident 42").code == 0
    (project / ".retl" / "retl.db").unlink()

    status = retl_cli("status")
    ran = retl_cli("run", "--all", "--force")

    for said in (status.err, ran.err):
        assert "warning: .retl/retl.db is missing" in said
        assert "holds deliveries of people" in said
        assert "retl pause" in said and "a paused sync runs again" in said
    assert "warning" not in retl_cli("status").err  # the new run log has the sync's run
