"""A `type: http` destination that never answers fails the run (exit 1, alert) within its
`retry` budget, with a message that says why: a server that answers 503 to everything, one that
never answers (each request outlives the read timeout), and one that refuses connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from run_harness import RetlProject
from servers.base import ContractServer, Incoming, Reply

BUDGET = {"max_attempts": 50, "max_seconds_per_batch": 2, "max_seconds_per_run": 3}
# Generous: the budget (3 s a run) plus the engine's pauses between rounds and a busy machine.
BOUND_SECONDS = 45


class Unavailable(ContractServer):
    """Answers every request 503 (no Retry-After)."""

    def handle(self, request: Incoming) -> Reply:
        return Reply(503, {"error": "service unavailable"})


class Silent(ContractServer):
    """Reads each request, then holds its answer far past the client's read timeout."""

    def dispatch(self, request: Incoming) -> Reply:
        super().dispatch(request)
        time.sleep(3)
        return Reply(200, {})

    def handle(self, request: Incoming) -> Reply:
        return Reply(200, {})


class Alerts(ContractServer):
    """The alert webhook: keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def handle(self, request: Incoming) -> Reply:
        self.received.append(request.json())
        return Reply(200, {})


@pytest.fixture
def alerts() -> Iterator[Alerts]:
    server = Alerts()
    server.start()
    yield server
    server.stop()


def closed_port() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def failing_project(
    root: Path, capsys: pytest.CaptureFixture[str], base_url: str, alerts: Alerts, **options: Any
) -> RetlProject:
    destination = {
        "type": "http",
        "base_url": base_url,
        "operations": {"insert": {"method": "POST", "path": "/contacts/batch"}},
        "batch_key": "records",
        "timeout": 0.5,
        "retry": BUDGET,
        **options,
    }
    project = RetlProject(root, {"hook": destination}, capsys, "hook", "contacts")
    config = yaml.safe_load((root / "retl.yml").read_text())
    config["alerts"] = {"ops": {"type": "webhook", "url": alerts.url + "/alert"}}
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    project.write_sync(mode="insert", alerts=["ops"])
    project.set_source([(k, f"name {k}") for k in range(1, 101)])
    return project


def run_failing(project: RetlProject, alerts: Alerts) -> dict[str, Any]:
    started = time.monotonic()
    run = project.run_json(code=1)
    assert time.monotonic() - started < BOUND_SECONDS
    assert run["status"] == "failed"
    assert project.state_keys() == set()
    assert len(alerts.received) == 1 and "contacts" in str(alerts.received[0])
    return run


def test_a_destination_answering_503_to_everything_fails_the_run_within_its_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None, alerts: Alerts
) -> None:
    server = Unavailable()
    server.start()
    try:
        project = failing_project(tmp_path / "p", capsys, server.url, alerts)
        run = run_failing(project, alerts)
    finally:
        server.stop()

    assert "destination 'hook' did not answer after" in run["error"]
    assert "HTTP 503" in run["error"]
    assert 2 <= len(server.log) < 50  # the seconds ran out before the attempts


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "idempotency-key"])
def test_a_destination_that_never_answers_fails_the_run_with_its_records_in_doubt(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
    alerts: Alerts,
    keyed: bool,
) -> None:
    server = Silent()
    server.start()
    keys = {"idempotency_header": "Idempotency-Key"} if keyed else {}
    try:
        project = failing_project(tmp_path / "p", capsys, server.url, alerts, **keys)
        run = run_failing(project, alerts)
    finally:
        server.stop()

    # The requests were written: the server may have applied them, so their records are in
    # doubt. Without an idempotency key a create is not sent again (it could be made twice);
    # with one, it is sent again (same key) until the budget is spent.
    assert "100 records are in doubt" in run["error"]
    assert run["counts"]["in_doubt"] == 100 and run["counts"]["create"] == 0
    if keyed:
        assert run["counts"]["requests"] >= 2
        assert len({log.digest for log in server.log}) == 1  # the same request every time
    else:
        assert run["counts"]["requests"] == 1


def test_a_destination_that_refuses_connections_fails_the_run_with_no_request_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: None, alerts: Alerts
) -> None:
    project = failing_project(tmp_path / "p", capsys, closed_port(), alerts)

    run = run_failing(project, alerts)

    assert "destination 'hook' did not answer after" in run["error"]
    assert "ConnectError" in run["error"]
    assert run["counts"].get("requests", 0) == 0  # refused connects are attempts, not requests
    assert run["counts"]["attempts"] >= 2
