"""`retl run` in insert (and upsert) mode into the HubSpot contract server, killed with SIGKILL at random
moments (while HubSpot has applied a batch and not yet answered), then run to success: every
record is in HubSpot once, none dead lettered, nothing left to plan."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from run_harness import RetlProject
from servers.hubspot import HubSpotServer

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 1000
OPEN_LIMITS = {"max_row_error_ratio": 1.0}


def hubspot_project(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    server: HubSpotServer,
    mode: str,
) -> RetlProject:
    monkeypatch.setenv("HUBSPOT_TOKEN", server.token)
    project = RetlProject(
        tmp_path / "project",
        {"hs": {"type": "hubspot", "token": "${HUBSPOT_TOKEN}", "base_url": server.url}},
        capsys,
        default_destination="hs",
        default_object="contacts",
    )
    project.warehouse(
        "CREATE TABLE src AS SELECT 'user' || i || '@example.com' AS email, "
        f"'name' || i AS firstname FROM range({RECORDS}) t(i)"
    )
    project.write_sync(
        "people",
        mode=mode,
        primary_key="email",
        mapping={"email": "email", "firstname": "firstname"},
        limits=OPEN_LIMITS,
    )
    return project


def start_run(project: RetlProject) -> subprocess.Popen[bytes]:
    """`python -m reverse_etl run people` in its own process, as a scheduler starts it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "reverse_etl", "run", "people", "--project-dir", str(project.root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mode", ["insert", "upsert"])
def test_a_run_killed_five_times_then_run_to_success_holds_every_record_once(
    mode: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    # Every batch write is held 0.3 s after it was applied: a kill right after the server
    # logged it lands before the answer, as a kill mid-batch does.
    server = hubspot_server_factory(delay=0.3)
    project = hubspot_project(tmp_path, capsys, monkeypatch, server, mode)
    rng = random.Random(20261207)

    for _ in range(5):
        target = len(server.log) + rng.randint(2, 6)
        run = start_run(project)
        deadline = time.monotonic() + 120
        while len(server.log) < target and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        run.kill()  # SIGKILL: nothing of the run's own clean-up happens
        run.wait(timeout=30)
    applied_before = len(server.store["contacts"])

    result = project.cli("run", "people")

    assert result.code == 0, result.output
    emails = sorted(r["email"] for r in server.store["contacts"].values())
    assert emails == sorted(f"user{i}@example.com" for i in range(RECORDS))  # each once
    assert applied_before > 0
    if mode == "insert":  # inserts a kill left in doubt are looked up; upserts are re-sent
        assert any(entry.path.endswith("/batch/read") for entry in server.log)
    # no create was sent twice (it would clash on email: 207 or 409); a 400 may answer the
    # half-sent body of a killed run
    clashed = [e for e in server.log if e.path.endswith("/batch/create") and e.status in (207, 409)]
    assert clashed == []
    assert project.dead_letters("people") == []
    counts = project.plan_counts("people")
    assert (counts["create"], counts["update"], counts["delete"]) == (0, 0, 0)
    assert project.state_keys("people") == set(emails)
