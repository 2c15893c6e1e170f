"""A destination that cannot be reached fails the run without acknowledging anything, and the
destination's password appears nowhere retl writes or prints."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_harness import PostgresDb, RetlProject

from reverse_etl.destinations.postgres import PostgresDestination

pytestmark = pytest.mark.postgres

PASSWORD = "s3cret-Pa55word"


def with_password(url: str, port: int | None = None) -> str:
    scheme, rest = url.split("://", 1)
    credentials, location = rest.split("@", 1)
    user = credentials.split(":", 1)[0]
    if port is not None:
        host = location.split("/", 1)[0].rsplit(":", 1)[0]
        location = f"{host}:{port}/" + location.split("/", 1)[1]
    return f"{scheme}://{user}:{PASSWORD}@{location}"


def files_mention(root: Path, text: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in (root / ".retl").rglob("*")
        if p.is_file() and text.encode() in p.read_bytes()
    ]


def test_an_unreachable_destination_fails_the_run_and_acknowledges_nothing(
    project: RetlProject, pg: PostgresDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PostgresDestination, "retry_wait_seconds", 0.0)
    monkeypatch.setenv("PG_URL", with_password(pg.url, port=1))
    project.write_sync()
    project.set_source([(1, "a"), (2, "b")])

    result = project.cli("run", "contacts", "--json")

    assert result.code == 1
    (run,) = result.json()["runs"]
    assert run["status"] == "failed"
    assert "cannot connect" in run["error"] and "127.0.0.1:1/" in run["error"]
    assert PASSWORD not in result.output
    assert files_mention(project.root, PASSWORD) == []
    assert project.runs()[0]["status"] == "failed"
    assert project.plan_counts()["create"] == 2


def test_the_password_of_a_working_destination_is_never_written(
    project: RetlProject, pg: PostgresDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_URL", with_password(pg.url))  # the test server trusts loopback
    project.write_sync(limits={"max_row_error_ratio": 0.5})
    pg.execute(f"ALTER TABLE {pg.schema}.contacts ADD CHECK (id < 3)")
    project.set_source([(1, "a"), (2, "b"), (3, "c")])

    outputs = [
        project.cli("plan", "contacts", "--json", "--out", str(project.root / "plan.json")),
        project.cli("run", "contacts", "--json"),
        project.cli("runs", "--json"),
        project.cli("dlq", "--json"),
        project.cli("status", "--json"),
        project.cli("state", "show", "contacts", "--json"),
    ]

    assert [o.code for o in outputs] == [0] * len(outputs), [o.output for o in outputs]
    assert outputs[1].json()["runs"][0]["counts"]["rejected"] == 1
    assert all(PASSWORD not in o.output for o in outputs)
    assert PASSWORD not in (project.root / "plan.json").read_text()
    assert files_mention(project.root, PASSWORD) == []
