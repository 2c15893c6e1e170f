"""Failed runs alert the sync's channels: Slack incoming webhooks and generic JSON webhooks."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_httpserver import HTTPServer

from reverse_etl import Engine, load_project

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
