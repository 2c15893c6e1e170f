"""What `retl status`, `runs`, `runs show`, `state` and `unlock` report is callable from Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverse_etl.config import load_project
from reverse_etl.project.status import (
    project_status,
    reset_state,
    run_detail,
    run_history,
    state_summary,
    unlock_sync,
)
from reverse_etl.state import DeadLetterEntry, DeadLetterQueue, RunLog

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  demo:
    url: duckdb:///warehouse.duckdb
destinations:
  app_db:
    type: sql
    url: sqlite:///app.sqlite
"""

SYNC = """\
warehouse: demo
source:
  sql: select id from customers
destination:
  name: app_db
  object: contacts
mode: upsert
primary_key: id
mapping:
  id: id
schedule: "0 * * * *"
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    (tmp_path / "syncs" / "contacts.yml").write_text(SYNC)
    (tmp_path / "syncs" / "orders.yml").write_text(SYNC.replace('"0 * * * *"', "manual"))
    return tmp_path


def test_status_lists_every_sync_with_its_last_run_and_dead_letters(root: Path) -> None:
    log = RunLog(root / ".retl" / "retl.db")
    run = log.start("contacts", None, None, False)
    log.finish(run.id, "success", {"create": 3, "update": 1})
    DeadLetterQueue(root / ".retl" / "retl.db").add(
        "contacts", run.id, [DeadLetterEntry(key="7", operation="create", record={}, error="no")]
    )

    contacts, orders = project_status(load_project(root))

    assert (contacts.sync, contacts.sent, contacts.dead_letters) == ("contacts", 4, 1)
    assert contacts.next_due is not None
    assert contacts.to_json()["last_run"]["id"] == run.id
    assert (orders.sync, orders.last_run, orders.next_due, orders.sent) == (
        "orders",
        None,
        None,
        None,
    )
    records, total = run_history(load_project(root), "contacts", 10)
    assert [r.id for r in records] == [run.id] and total == 1
    detail = run_detail(load_project(root), run.id)
    assert detail is not None and [d.key for d in detail.dead_letters] == ["7"]


def test_state_of_a_sync_without_deliveries_is_empty_and_resets_to_nothing(root: Path) -> None:
    project = load_project(root)
    sync = project.syncs["contacts"]

    summary = state_summary(project, sync)

    assert (summary.exists, summary.records, summary.sample) == (False, 0, [])
    assert reset_state(project, sync) is False
    assert unlock_sync(project, sync) == (False, None)
