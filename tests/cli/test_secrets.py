"""A secret written anywhere a credential goes never comes out: not on stdout or stderr, not in
--json, not in an alert body, not in any file under .retl/ (issue 8 item 6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

CANARY = "CANARY7f3e"

RETL_YML = """version: 1
warehouses:
  pg:
    url: ${PG_URL}
  my:
    url: ${MY_URL}
destinations:
  app:
    type: sql
    url: ${PG_URL}
  mariadb:
    type: sql
    url: ${MY_URL}
alerts:
  team:
    type: slack
    webhook_url: ${SLACK_URL}
  pager:
    type: webhook
    url: ${PAGER_URL}
    headers:
      Authorization: Bearer ${PAGER_TOKEN}
"""
SYNC = """warehouse: {warehouse}
source:
  sql: select 1 as id, 'ana@example.com' as email
destination:
  name: {destination}
  object: {object}
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
alerts: [team, pager]
"""


@pytest.fixture
def project(
    tmp_path: Path,
    pg_schema: str,
    postgres_url: str,
    mysql_url: str,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
) -> Path:
    """Warehouse and destination URLs carrying the canary as a query-string password (PostgreSQL
    trusts it; MariaDB refuses it, so that sync fails and alerts)."""
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(RETL_YML)
    for name, warehouse, destination, object in [
        ("good", "pg", "app", f"{pg_schema}.people"),
        ("bad", "pg", "mariadb", "people"),
        ("mysource", "my", "app", f"{pg_schema}.other"),
    ]:
        text = SYNC.format(warehouse=warehouse, destination=destination, object=object)
        (tmp_path / "syncs" / f"{name}.yml").write_text(text)
    pg = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    my = mysql_url.replace("root:@", "root@", 1)
    monkeypatch.setenv("PG_URL", f"{pg}?password={CANARY}")
    monkeypatch.setenv("MY_URL", f"{my}?password={CANARY}")
    monkeypatch.setenv("SLACK_URL", httpserver.url_for("/slack"))
    monkeypatch.setenv("PAGER_URL", httpserver.url_for("/pager"))
    monkeypatch.setenv("PAGER_TOKEN", f"tok-{CANARY}")
    httpserver.expect_request("/slack", method="POST").respond_with_data("ok")
    httpserver.expect_request("/pager", method="POST").respond_with_json({"ok": True})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_query_string_password_never_appears_in_output_alerts_or_local_files(
    project: Path, retl_cli: Callable[..., Any], httpserver: HTTPServer
) -> None:
    outputs: list[str] = []

    def retl(*args: str) -> Any:
        result = retl_cli(*args)
        outputs.extend([result.out, result.err])
        assert "Traceback" not in result.err and "internal error" not in result.err
        return result

    assert retl("validate", "--connect").code == 1  # MariaDB refuses the password
    assert retl("preview", "good").code == 0
    assert retl("preview", "mysource").code == 1
    assert retl("plan", "good", "bad").code == 0  # planning never touches the destination
    assert retl("plan", "good", "--json").code == 0
    assert retl("run", "good", "bad").code == 1
    runs = retl("runs", "--json").json()
    failed = next(run for run in runs["runs"] if run["sync"] == "bad")
    assert failed["status"] == "failed" and "password=***" in failed["error"]
    assert retl("runs", "show", failed["id"], "--json").code == 0
    assert retl("status", "--json").code == 0
    for command in (["runs"], ["status"], ["dlq"], ["run", "bad", "--json"]):
        retl(*command)

    bodies = [request.get_data(as_text=True) for request, _ in httpserver.log]
    assert len(bodies) >= 2, "the failed run alerts both channels"
    assert any("password=***" in body for body in bodies)
    files = [path for path in (project / ".retl").rglob("*") if path.is_file()]
    assert files, "the runs wrote their state"
    leaks = [f"output {i}" for i, text in enumerate(outputs) if CANARY in text]
    leaks += [f"alert {i}" for i, body in enumerate(bodies) if CANARY in body]
    leaks += [str(path) for path in files if CANARY.encode() in path.read_bytes()]
    assert leaks == []


def test_json_output_stays_valid_json_when_secrets_are_masked(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    retl_cli("run", "bad")
    result = retl_cli("status", "--json")
    assert CANARY not in result.out
    json.loads(result.out)
