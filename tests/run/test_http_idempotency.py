"""`type: http` into an API that honours idempotency keys (a Stripe-style stand-in, where every
create is a new record unless its key was seen): a lost answer, a 401 mid-batch and runs killed
at random moments end, after a run to success, with every source row there exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from run_harness import RetlProject
from servers.webhook import TOKEN, IdempotentApi

PER_RECORD = {
    "operations": {"insert": {"method": "POST", "path": "/contacts"}},
    "idempotency_header": "Idempotency-Key",
    "concurrency": 4,
}
BATCHED = {
    "operations": {"insert": {"method": "POST", "path": "/contacts/batch"}},
    "batch_key": "records",
    "idempotency_header": "Idempotency-Key",
    "idempotency_field": "idempotency_key",
    "results_path": "results",
    "result_id": "id",
}


@pytest.fixture
def servers() -> Iterator[list[IdempotentApi]]:
    started: list[IdempotentApi] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[IdempotentApi], **faults: Any) -> IdempotentApi:
    api = IdempotentApi(**faults)
    api.start()
    servers.append(api)
    return api


def hook_project(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    api: IdempotentApi,
    rows: int,
    options: dict[str, Any],
    batch_size: int = 100,
) -> RetlProject:
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    destination = {
        "type": "http",
        "base_url": api.url,
        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
        "timeout": 0.5,
        "retry": {"max_attempts": 3, "max_seconds_per_batch": 5, "max_seconds_per_run": 20},
        **options,
    }
    project = RetlProject(root, {"hook": destination}, capsys, "hook", "contacts")
    project.write_sync(
        mode="insert",
        mapping={"external_id": "id", "name": "name"},
        batch_size=batch_size,
    )
    project.set_source([(k, f"name {k}") for k in range(1, rows + 1)])
    return project


def assert_delivered_once(project: RetlProject, api: IdempotentApi, rows: int) -> None:
    assert api.duplicates() == 0
    assert api.external_ids() == set(range(1, rows + 1))
    assert project.state_keys() == {str(k) for k in range(1, rows + 1)}
    counts = project.plan_counts()
    assert counts["create"] == counts["update"] == counts["delete"] == 0


@pytest.mark.parametrize("options", [PER_RECORD, BATCHED], ids=["per-record", "batched"])
def test_a_lost_answer_mid_batch_is_sent_again_with_its_key_and_applied_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: list[IdempotentApi],
    clean_env: None,
    options: dict[str, Any],
) -> None:
    api = start(servers, lose={2})
    project = hook_project(tmp_path / "p", capsys, monkeypatch, api, 250, options)

    run = project.run_json()

    assert run["status"] == "success", run
    assert api.replayed >= 1  # the request whose answer was lost came again, with its key
    assert_delivered_once(project, api, 250)


def test_a_401_mid_batch_keeps_what_was_accepted_and_the_next_run_creates_no_duplicate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: list[IdempotentApi],
    clean_env: None,
) -> None:
    api = start(servers, refuse={60})
    project = hook_project(tmp_path / "p", capsys, monkeypatch, api, 200, PER_RECORD)

    first = project.run_json(code=1)

    assert first["status"] == "failed"
    assert "refused the credentials (401" in first["error"]
    assert TOKEN not in str(first)
    acknowledged = {int(k) for k in project.state_keys()}
    assert len(acknowledged) >= 50  # the records accepted before the 401 are in state
    assert acknowledged <= api.external_ids()
    second = project.run_json()
    assert second["status"] == "success", second
    assert_delivered_once(project, api, 200)


@pytest.mark.parametrize("options", [PER_RECORD, BATCHED], ids=["per-record", "batched"])
def test_runs_killed_at_random_moments_leave_no_duplicate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    servers: list[IdempotentApi],
    clean_env: None,
    options: dict[str, Any],
) -> None:
    batched = options is BATCHED
    # Slow enough that five kills (1–3 s each) end before the records do, on any machine.
    api = start(servers, delay=0.6 if batched else 0.1)
    rows = 1500
    size = 20 if batched else 50
    project = hook_project(tmp_path / "p", capsys, monkeypatch, api, rows, options, size)
    chance = random.Random(os.getpid())
    killed = 0
    for _ in range(5):
        process = subprocess.Popen(
            [sys.executable, "-m", "reverse_etl", "run", "contacts"],
            cwd=project.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        time.sleep(chance.uniform(1.0, 3.0))
        if process.poll() is None:
            killed += 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert killed >= 3, "the runs ended before they could be killed"

    run = project.run_json()

    assert run["status"] == "success", run
    assert api.replayed >= 1  # creates a killed run left in doubt came again, with their keys
    assert_delivered_once(project, api, rows)
