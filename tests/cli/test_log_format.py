"""`--log-format json` (any command): stderr carries one JSON object per event and nothing else,
with no secret in it; and off a terminal a long run prints a plain progress line now and then.

The destination is a loopback webhook (`type: http`) whose token is a canary, that throttles
its first request (a retry event), rejects records without '@' with an error that echoes the
token (a careless API), and whose alert channel cannot be reached (alert_failed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

TOKEN = "hook-CANARY-token-5678"
ALERT_SECRET = "alert-CANARY-secret-9012"
BATCH = 50


class Webhook:
    """`POST /contacts/batch` with `{"records": [...]}`: per-record errors for emails without '@';
    the first request is answered 429 with Retry-After: 0."""

    def __init__(self, server: HTTPServer) -> None:
        self.throttle_left = 1
        self.lock = threading.Lock()
        server.expect_request("/contacts/batch", method="POST").respond_with_handler(self.batch)

    def batch(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response('{"error": "unauthorized"}', status=401)
        with self.lock:
            if self.throttle_left:
                self.throttle_left -= 1
                return Response('{"error": "slow down"}', status=429, headers={"Retry-After": "0"})
        records = json.loads(request.data)["records"]
        errors = [
            {"index": i, "message": f"invalid email {r['email']!r} (key {TOKEN})"}
            for i, r in enumerate(records)
            if "@" not in str(r["email"])
        ]
        return Response(json.dumps({"errors": errors}), content_type="application/json")


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None, httpserver: HTTPServer
) -> Path:
    """Two syncs into the webhook: `good` (120 valid rows) and `bad` (every 10th email is
    invalid, above its error ratio, so the run fails and alerts)."""
    Webhook(httpserver)
    root = tmp_path / "project"
    (root / "syncs").mkdir(parents=True)
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    monkeypatch.setenv("ALERT_URL", f"http://127.0.0.1:9/hooks?token={ALERT_SECRET}")
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {
            "hook": {
                "type": "http",
                "base_url": httpserver.url_for("/").rstrip("/"),
                "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
                "operations": {"upsert": {"method": "POST", "path": "/contacts/batch"}},
                "batch_key": "records",
                "errors_path": "errors",
            }
        },
        "alerts": {"ops": {"type": "webhook", "url": "${ALERT_URL}"}},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    for name, table, limit in (("good", "src_good", 0.5), ("bad", "src_bad", 0.01)):
        sync = {
            "warehouse": "wh",
            "source": {"sql": f"select id, email from {table}"},
            "destination": {"name": "hook", "object": "contacts"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "email": "email"},
            "batch_size": BATCH,
            "schedule": "*/5 * * * *",
            "alerts": ["ops"],
            "limits": {"max_row_error_ratio": limit},
        }
        (root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(sync))
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        for table, rows in (
            ("src_good", [(k, f"u{k}@example.com") for k in range(1, 121)]),
            ("src_bad", [(k, f"u{k}" if k % 10 == 0 else f"u{k}@x.io") for k in range(1, 41)]),
        ):
            con.execute(f"CREATE TABLE {table} (id INTEGER, email VARCHAR)")
            con.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
    finally:
        con.close()
    return root


def events(stderr: str) -> list[dict[str, Any]]:
    """Every line of stderr as JSON (fails on any line that is not a JSON object)."""
    lines = stderr.splitlines()
    assert lines, "stderr is empty"
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in parsed)
    return parsed


def of(found: list[dict[str, Any]], event: str, sync: str | None = None) -> list[dict[str, Any]]:
    return [e for e in found if e["event"] == event and (sync is None or e["sync"] == sync)]


def test_run_all_writes_only_json_lines_one_per_acknowledged_batch_and_run_end_without_secrets(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("run", "--all", "--log-format", "json", "--project-dir", str(project))

    assert result.code == 1  # `bad` failed on its rejections
    found = events(result.err)
    assert TOKEN not in result.err and ALERT_SECRET not in result.err
    for event in found:
        assert {"ts", "level", "event", "run_id", "sync"} <= event.keys()
    good = of(found, "batch_acknowledged", "good")
    assert [e["sent"] for e in good] == [50, 100, 120]
    assert good[-1]["counts"]["create"] == 120 and good[-1]["total"] == 120
    finished = {e["sync"]: e for e in of(found, "run_finished")}
    assert set(finished) == {"good", "bad"}
    assert finished["good"]["status"] == "success" and finished["good"]["level"] == "info"
    assert finished["good"]["duration_seconds"] >= 0
    assert finished["good"]["state_records"] == 120
    assert finished["bad"]["status"] == "failed" and finished["bad"]["level"] == "error"
    started = {e["sync"]: e["run_id"] for e in of(found, "run_started")}
    assert started == {s: finished[s]["run_id"] for s in ("good", "bad")}
    assert of(found, "retry") and of(found, "retry")[0]["what"] == "requests"
    (summary,) = of(found, "rejection_summary", "bad")
    assert summary["rejected"] >= 1
    assert "invalid email" in summary["top_errors"][0]["error"]
    (alert,) = of(found, "alert_failed", "bad")
    assert alert["channel"] == "ops"
    assert not of(found, "alert_sent")


def test_a_failing_command_is_one_error_event(project: Path, retl_cli: Callable[..., Any]) -> None:
    unknown = retl_cli("run", "nosuch", "--project-dir", str(project), "--log-format=json")
    usage = retl_cli("--log-format", "json", "run", "--bogus", "--project-dir", str(project))

    (error,) = events(unknown.err)
    assert unknown.code == 2 and error["event"] == "error" and error["level"] == "error"
    assert "nosuch" in error["message"] and error["exit_code"] == 2
    (parser,) = events(usage.err)
    assert usage.code == 2 and parser["event"] == "error" and "--bogus" in parser["message"]


def test_other_commands_text_on_stderr_becomes_message_events(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    saved = project / "plan.json"
    result = retl_cli(
        *("plan", "good", "--json", "--out", str(saved)),
        *("--log-format", "json", "--project-dir", str(project)),
    )

    found = events(result.err)
    assert result.code == 0
    assert [e["event"] for e in found] == ["message"] * len(found)
    assert any("plan saved to" in e["message"] for e in found)
    assert [s["name"] for s in result.json()["syncs"]] == ["good"]  # stdout: the document only


def test_an_unknown_log_format_is_a_usage_error(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("status", "--log-format", "xml", "--project-dir", str(project))

    assert result.code == 2
    assert "unknown log format 'xml'" in result.err


def test_off_a_terminal_a_run_prints_plain_progress_lines(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETL_PROGRESS_INTERVAL", "0")  # a line for every batch, not every 5 s

    result = retl_cli("run", "good", "--project-dir", str(project))

    assert result.code == 0, result.err
    progress = [line for line in result.err.splitlines() if " sent, " in line]
    assert progress == [
        "good: 50 / 120 sent, 0 rejected",
        "good: 100 / 120 sent, 0 rejected",
        "good: 120 / 120 sent, 0 rejected",
    ]
    assert "\x1b[" not in result.err  # no progress bar or colour in a log


def test_python_callers_get_the_same_events(project: Path) -> None:
    from reverse_etl import Engine, RunEvent, RunOptions, load_project

    seen: list[RunEvent] = []
    loaded = load_project(project)
    outcome = Engine(loaded).run(loaded.syncs["good"], RunOptions(on_event=seen.append))

    assert outcome.status == "success"
    names = [e.event for e in seen]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("batch_acknowledged") == 3
    assert {e.run_id for e in seen} == {outcome.record.id if outcome.record else None}


def test_an_alert_that_arrives_is_an_alert_sent_event(
    project: Path,
    retl_cli: Callable[..., Any],
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/alert", method="POST").respond_with_data("ok")
    monkeypatch.setenv("ALERT_URL", httpserver.url_for("/alert") + f"?token={ALERT_SECRET}")

    result = retl_cli("run", "bad", "--log-format", "json", "--project-dir", str(project))

    found = events(result.err)
    assert result.code == 1
    (sent,) = of(found, "alert_sent", "bad")
    assert sent["channel"] == "ops" and not of(found, "alert_failed")
    assert ALERT_SECRET not in result.err


def test_with_json_output_no_progress_line_joins_the_document(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETL_PROGRESS_INTERVAL", "0")

    result = retl_cli("run", "good", "--json", "--project-dir", str(project))

    assert result.json()["runs"][0]["status"] == "success"
    assert " sent, " not in result.err
