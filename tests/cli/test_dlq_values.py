"""`dead_letters: {values: false}` (retl issue 17): the queue keeps each rejected record's key,
operation and error but none of its values (customer data), `retl dlq` says so, and `retl dlq
retry` re-reads the rows from the source by key. The project's setting applies unless a sync
has its own."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response


class Contacts:
    """`POST /contacts/batch` {"records": [...]}: refuses records whose email has no '@' (its
    error quotes the value, as real APIs do), keeps the others by id."""

    def __init__(self, server: HTTPServer) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        server.expect_request("/contacts/batch", method="POST").respond_with_handler(self.batch)

    def batch(self, request: Request) -> Response:
        errors = []
        for index, record in enumerate(json.loads(request.data)["records"]):
            if "@" not in str(record["email"]):
                errors.append({"index": index, "message": f"invalid email '{record['email']}'"})
            else:
                self.store[str(record["id"])] = record
        return Response(json.dumps({"errors": errors}), content_type="application/json")


def write_project(
    root: Path, server: HTTPServer, project: dict[str, Any] | None, sync: dict[str, Any] | None
) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {
            "hook": {
                "type": "http",
                "base_url": server.url_for("/").rstrip("/"),
                "operations": {"upsert": {"method": "POST", "path": "/contacts/batch"}},
                "batch_key": "records",
                "errors_path": "errors",
            }
        },
    }
    if project is not None:
        config["dead_letters"] = project
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    document: dict[str, Any] = {
        "warehouse": "wh",
        "source": {"sql": "select id, email from src"},
        "destination": {"name": "hook", "object": "contacts"},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": {"id": "id", "email": "email"},
        "limits": {"max_row_error_ratio": 1.0},
    }
    if sync is not None:
        document["dead_letters"] = sync
    (root / "syncs" / "contacts.yml").write_text(yaml.safe_dump(document))


def set_source(root: Path, rows: list[tuple[int, str]]) -> None:
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        con.execute("CREATE OR REPLACE TABLE src (id INTEGER, email VARCHAR)")
        con.executemany("INSERT INTO src VALUES (?, ?)", rows)
    finally:
        con.close()


def stored_records(root: Path) -> list[str]:
    """The `record` column of the queue as the state file holds it."""
    with sqlite3.connect(root / ".retl" / "retl.db") as conn:
        return [r for (r,) in conn.execute("SELECT record FROM dead_letters ORDER BY key")]


ROWS = [(1, "ann@example.com"), (2, "not-an-email")]


@pytest.fixture
def root(tmp_path: Path, clean_env: None) -> Path:
    return tmp_path / "project"


def test_without_values_the_queue_keeps_key_operation_and_error_and_retry_reads_the_source(
    root: Path, httpserver: HTTPServer, retl_cli: Any
) -> None:
    contacts = Contacts(httpserver)
    write_project(root, httpserver, {"values": False}, None)
    set_source(root, ROWS)

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(root))
    listed = retl_cli("dlq", "contacts", "--json", "--project-dir", str(root)).json()
    shown = retl_cli("dlq", "contacts", "--project-dir", str(root))

    assert run.json()["runs"][0]["counts"]["rejected"] == 1
    (letter,) = listed["dead_letters"]
    assert (letter["key"], letter["operation"]) == ("2", "create")
    assert letter["record"] is None and letter["values_kept"] is False
    # the destination's error is kept as it wrote it, even when it quotes a value
    assert letter["error"].endswith("invalid email 'not-an-email'")
    assert stored_records(root) == ["null"]
    assert "values not kept" in shown.out

    set_source(root, [ROWS[0], (2, "bob@example.com")])
    retry = retl_cli("dlq", "retry", "contacts", "--yes", "--project-dir", str(root))

    assert retry.code == 0, retry.out + retry.err
    assert contacts.store["2"] == {"id": 2, "email": "bob@example.com"}
    assert retl_cli("dlq", "contacts", "--json", "--project-dir", str(root)).json()["total"] == 0


def test_by_default_the_queue_keeps_the_rejected_record_as_sent(
    root: Path, httpserver: HTTPServer, retl_cli: Any
) -> None:
    Contacts(httpserver)
    write_project(root, httpserver, None, None)
    set_source(root, ROWS)

    retl_cli("run", "contacts", "--project-dir", str(root))
    (letter,) = retl_cli("dlq", "contacts", "--json", "--project-dir", str(root)).json()[
        "dead_letters"
    ]

    assert letter["record"] == {"id": 2, "email": "not-an-email"}
    assert letter["values_kept"] is True


@pytest.mark.parametrize(
    ("project", "sync", "kept"),
    [({"values": False}, {"values": True}, True), (None, {"values": False}, False)],
)
def test_a_sync_setting_overrides_the_project_one(
    root: Path,
    httpserver: HTTPServer,
    retl_cli: Any,
    project: dict[str, Any] | None,
    sync: dict[str, Any],
    kept: bool,
) -> None:
    Contacts(httpserver)
    write_project(root, httpserver, project, sync)
    set_source(root, ROWS)

    retl_cli("run", "contacts", "--project-dir", str(root))

    (stored,) = stored_records(root)
    assert json.loads(stored) == ({"id": 2, "email": "not-an-email"} if kept else None)


def test_letters_queued_before_values_false_lose_their_values_on_the_next_run(
    root: Path, httpserver: HTTPServer, retl_cli: Any
) -> None:
    Contacts(httpserver)
    write_project(root, httpserver, None, None)
    set_source(root, [*ROWS, (3, "also bad")])
    retl_cli("run", "contacts", "--project-dir", str(root))
    assert "null" not in stored_records(root)

    write_project(root, httpserver, None, {"values": False})
    set_source(root, [*ROWS, (3, "also bad"), (4, "ann@example.com")])
    plan = retl_cli("plan", "contacts", "--json", "--project-dir", str(root))
    assert plan.code == 0 and "null" not in stored_records(root)  # a plan changes no state
    run = retl_cli("run", "contacts", "--json", "--project-dir", str(root))

    assert run.json()["runs"][0]["counts"]["create"] == 1
    assert stored_records(root) == ["null", "null"]
