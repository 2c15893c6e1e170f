"""Reading the source into the engine: a DuckDB file is attached and read inside the engine's
connection, with the same results, errors and query_timeout as the streamed path."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pytest

from reverse_etl import Engine, load_project
from reverse_etl.errors import RetlError, WarehouseError

pytestmark = pytest.mark.usefixtures("clean_env")


def make_project(root: Path, sql: str, url_query: str = "", timeout: str = "") -> Engine:
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute("CREATE SCHEMA crm")
    con.execute("CREATE TABLE crm.people AS SELECT range AS id, 'p' || range AS name FROM range(5)")
    con.execute("CREATE VIEW crm.named AS SELECT * FROM crm.people WHERE id < 3")
    con.close()
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(
        f"version: 1\nwarehouses:\n  wh:\n    url: duckdb:///wh.duckdb{url_query}\n{timeout}"
        "destinations:\n  out:\n    type: file\n    path: out\n"
    )
    (root / "syncs" / "people.yml").write_text(
        f"warehouse: wh\nsource:\n  sql: {sql}\ndestination:\n  name: out\n  object: people\n"
        "mode: upsert\nprimary_key: id\nmapping:\n  id: id\n  name: name\n"
    )
    return Engine(load_project(root))


@pytest.mark.parametrize("url_query", ["", "?threads=1"], ids=["attached", "streamed"])
def test_schema_qualified_names_and_views_resolve_in_the_warehouse(
    tmp_path: Path, url_query: str
) -> None:
    engine = make_project(tmp_path, "select * from crm.named", url_query)

    plan = engine.plan(engine.project.syncs["people"])

    assert plan.counts.create == 3
    assert [r["id"] for r in plan.samples["create"]] == [0, 1, 2]


@pytest.mark.parametrize("url_query", ["", "?threads=1"], ids=["attached", "streamed"])
def test_a_missing_table_is_a_warehouse_error_naming_the_warehouse(
    tmp_path: Path, url_query: str
) -> None:
    engine = make_project(tmp_path, "select * from crm.nobody", url_query)

    with pytest.raises(WarehouseError) as caught:
        engine.plan(engine.project.syncs["people"])

    assert "warehouse 'wh'" in caught.value.message
    assert "nobody" in caught.value.message


def test_a_mapped_column_missing_from_the_query_lists_what_it_returns(tmp_path: Path) -> None:
    engine = make_project(tmp_path, "select id from crm.people")

    with pytest.raises(RetlError) as caught:
        engine.plan(engine.project.syncs["people"])

    assert "column 'name'" in caught.value.message
    assert caught.value.hint == "the query returns: id"


def test_an_attached_query_is_cancelled_after_query_timeout_and_the_engine_is_reusable(
    tmp_path: Path,
) -> None:
    slow = "select a.range AS id, 'x' AS name from range(100000000) AS a, range(100000) AS b"
    engine = make_project(tmp_path, slow, timeout="    query_timeout: 1\n")
    started = time.monotonic()

    with pytest.raises(WarehouseError) as caught:
        engine.plan(engine.project.syncs["people"])

    assert time.monotonic() - started < 10
    assert caught.value.message == "query on warehouse 'wh' was cancelled after 1 s (query_timeout)"
