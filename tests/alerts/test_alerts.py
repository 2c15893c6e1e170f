"""Failed runs alert the sync's channels: Slack incoming webhooks and generic JSON webhooks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from reverse_etl import Engine, load_project
from reverse_etl.alerts import Failure, deliver_failure_alerts

RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: postgres
    url: postgresql://retl@127.0.0.1:1/none
alerts:
  team:
    type: slack
    webhook_url: ${SLACK_URL}
  pager:
    type: webhook
    url: ${PAGER_URL}
    headers:
      Authorization: ${PAGER_TOKEN}
"""
SYNC = """warehouse: memory
source:
  sql: select 1 as id
destination:
  name: app
  object: people
mode: upsert
primary_key: id
mapping:
  id: id
alerts: [team, pager]
"""


ENV_UNUSED = {"PAGER_URL": "http://127.0.0.1:9/unused", "PAGER_TOKEN": "unused"}


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def project_at(root: Path, httpserver: HTTPServer):  # type: ignore[no-untyped-def]
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(RETL_YML)
    (root / "syncs" / "people.yml").write_text(SYNC)
    env = {
        "SLACK_URL": httpserver.url_for("/slack"),
        "PAGER_URL": httpserver.url_for("/pager"),
        "PAGER_TOKEN": "Bearer s3cret",
    }
    project = load_project(root, env=env)
    assert project.all_problems == []
    return project


def test_a_failed_run_posts_to_every_channel_of_the_sync(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/slack", method="POST").respond_with_data("ok")
    httpserver.expect_request(
        "/pager", method="POST", headers={"Authorization": "Bearer s3cret"}
    ).respond_with_json({"accepted": True})
    project = project_at(tmp_path, httpserver)

    outcome = Engine(project).run(project.syncs["people"])

    assert outcome.status == "failed"
    requests = {request.path: request for request, _ in httpserver.log}
    slack = json.loads(requests["/slack"].data)
    assert slack["text"].startswith("retl: sync 'people' failed")
    assert "cannot connect to PostgreSQL destination 'app'" in slack["text"]
    pager = json.loads(requests["/pager"].data)
    assert pager["event"] == "run_failed"
    assert pager["run"]["sync"] == "people"
    assert pager["run"]["status"] == "failed"
    assert "s3cret" not in requests["/slack"].data.decode()


def test_an_unreachable_alert_channel_does_not_change_the_outcome(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/slack").respond_with_data("down", status=503)
    httpserver.expect_request("/pager").respond_with_data("down", status=500)
    project = project_at(tmp_path, httpserver)

    outcome = Engine(project).run(project.syncs["people"])

    assert outcome.status == "failed"
    assert "cannot connect" in (outcome.error or "")
    assert len(httpserver.log) == 2


def test_an_alert_names_the_sync_the_error_the_counts_and_the_run_command(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/slack", method="POST").respond_with_data("ok")
    httpserver.expect_request("/pager", method="POST").respond_with_json({"accepted": True})
    project = project_at(tmp_path, httpserver)

    outcome = Engine(project).run(project.syncs["people"])

    assert outcome.record is not None
    run_id = outcome.record.id
    requests = {request.path: request for request, _ in httpserver.log}
    lines = json.loads(requests["/slack"].data)["text"].splitlines()
    assert lines[0] == f"retl: sync 'people' failed (run {run_id})"
    assert lines[1].startswith("error: cannot connect to PostgreSQL destination 'app'")
    assert "sent: nothing" in lines
    assert lines[-1] == f"details: retl runs show {run_id}"
    pager = json.loads(requests["/pager"].data)
    assert pager["run"]["command"] == f"retl runs show {run_id}"
    assert pager["run"]["counts"] == outcome.counts
    assert f"retl runs show {run_id}" in pager["text"]


def test_a_failed_delivery_is_one_line_on_stderr_without_the_webhook_token(
    tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    token_path = "/services/T0001/B0002/tokenXYZ123secret"
    httpserver.expect_request(token_path).respond_with_data("down", status=500)
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    (tmp_path / "syncs" / "people.yml").write_text(SYNC.replace("[team, pager]", "[team]"))
    project = load_project(
        tmp_path, env={**ENV_UNUSED, "SLACK_URL": httpserver.url_for(token_path)}
    )

    outcome = Engine(project).run(project.syncs["people"])

    assert outcome.status == "failed"
    assert len(httpserver.log) == 1  # the alert was tried
    lines = [line for line in capsys.readouterr().err.splitlines() if "alert" in line]
    assert lines == [
        f"retl: alert for sync 'people' (run {outcome.record.id if outcome.record else '-'}) to "
        f"channel 'team' failed: HTTP 500 from http://{httpserver.host}:{httpserver.port}; "
        "the run's result stands"
    ]
    assert "tokenXYZ123secret" not in lines[0] and "T0001" not in lines[0]


def test_an_unreachable_channel_is_logged_and_the_run_result_stands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    (tmp_path / "syncs" / "people.yml").write_text(SYNC)
    closed = f"http://127.0.0.1:{free_port()}/hook?token=abc123secret"
    project = load_project(
        tmp_path, env={"SLACK_URL": closed, "PAGER_URL": closed, "PAGER_TOKEN": "x"}
    )

    deliveries = deliver_failure_alerts(
        project, Failure("people", "r1", "failed", "boom", counts={"create": 3, "rejected": 1})
    )

    assert [(d.channel, d.ok) for d in deliveries] == [("team", False), ("pager", False)]
    err = capsys.readouterr().err
    assert err.count("\n") == 2
    assert "to channel 'team' failed: cannot reach http://127.0.0.1:" in err
    assert "abc123secret" not in err


def test_a_run_refused_by_a_delete_limit_alerts(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/slack").respond_with_data("ok")
    (tmp_path / "syncs").mkdir()
    (tmp_path / "sql").mkdir()
    (tmp_path / "retl.yml").write_text(
        RETL_YML.replace(
            "type: postgres\n    url: postgresql://retl@127.0.0.1:1/none",
            "type: sql\n    url: sqlite:///app.sqlite\n    create_tables: true",
        )
    )
    (tmp_path / "sql" / "people.sql").write_text("select * from range(10) t(id)\n")
    (tmp_path / "syncs" / "people.yml").write_text(
        SYNC.replace("  sql: select 1 as id", "  file: sql/people.sql").replace(
            "[team, pager]", "[team]\non_removed: delete\nallow_destructive: true"
        )
    )
    env = {**ENV_UNUSED, "SLACK_URL": httpserver.url_for("/slack")}
    first = Engine(load_project(tmp_path, env=env)).run(
        load_project(tmp_path, env=env).syncs["people"]
    )
    assert first.status == "success" and httpserver.log == []
    (tmp_path / "sql" / "people.sql").write_text("select * from range(1) t(id)\n")
    project = load_project(tmp_path, env=env)

    outcome = Engine(project).run(project.syncs["people"])

    assert outcome.status == "refused"
    ((request, _),) = httpserver.log
    text = json.loads(request.data)["text"]
    assert text.startswith("retl: sync 'people' refused")
    assert "max_delete_ratio" in text and "planned: 9 delete" in text
