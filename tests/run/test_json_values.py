"""A JSON source column (DuckDB `JSON`, PostgreSQL `json`/`jsonb`) reaches files and APIs as
JSON, not as a string holding JSON text (retl issue 15): JSON Lines and `http` bodies carry the
value, CSV and Parquet its compact text, a `jsonb` table the same JSON (SQL NULL and a JSON
`null` kept apart wherever the format can tell them apart)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

DOCS = [
    (1, '{"a":  [1, 2.50], "b": {"c": null}, "s": "x"}'),
    (2, "null"),
    (3, None),
    (4, '"text"'),
    (5, "[true, 12345678901234567890]"),
]
# What a JSON Lines file or an http body holds for each row's `doc`.
VALUES = [
    {"a": [1, 2.5], "b": {"c": None}, "s": "x"},
    None,
    None,
    "text",
    [True, 12345678901234567890],
]
# What a CSV cell or a Parquet string holds (None: SQL NULL).
TEXTS = [
    '{"a":[1,2.5],"b":{"c":null},"s":"x"}',
    "null",
    None,
    '"text"',
    "[true,12345678901234567890]",
]


def write_project(root: Path, warehouse: str, destinations: dict[str, Any], sql: str) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    config = {"version": 1, "warehouses": {"wh": {"url": warehouse}}, "destinations": destinations}
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    for name in destinations:
        document = {
            "warehouse": "wh",
            "source": {"sql": sql},
            "destination": {"name": name, "object": "docs" if name != "db" else "dst"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "doc": "doc"},
        }
        (root / "syncs" / f"to_{name}.yml").write_text(yaml.safe_dump(document))


def jsonl_docs(path: Path) -> list[Any]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["doc"] for r in sorted(records, key=lambda r: r["id"])]


FILES = {
    "jsonl": {"type": "file", "path": "out/jsonl"},
    "csv": {"type": "file", "path": "out/csv", "format": "csv"},
    "parquet": {"type": "file", "path": "out/parquet", "format": "parquet"},
}


def test_a_duckdb_json_column_is_json_in_jsonl_and_compact_text_in_csv_and_parquet(
    tmp_path: Path, retl_cli: Any, clean_env: None
) -> None:
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("CREATE TABLE src (id INTEGER, doc JSON)")
    con.executemany("INSERT INTO src VALUES (?, ?)", DOCS)
    con.close()
    write_project(tmp_path, "duckdb:///wh.duckdb", FILES, "select id, doc from src")

    result = retl_cli("run", "--all", "--force", "--project-dir", str(tmp_path))

    assert result.code == 0, result.out + result.err
    assert jsonl_docs(tmp_path / "out/jsonl/docs.jsonl") == VALUES
    with (tmp_path / "out/csv/docs.csv").open(newline="") as f:
        cells = [row["doc"] for row in csv.DictReader(f)]
    assert cells == [t if t is not None else "" for t in TEXTS]  # SQL NULL: an empty cell
    (part,) = (tmp_path / "out/parquet/docs").glob("*.parquet")
    table = pq.read_table(part)
    assert str(table.schema.field("doc").type) == "string"
    assert table.sort_by("id").column("doc").to_pylist() == TEXTS


def test_a_json_value_computed_in_an_in_memory_duckdb_is_json_too(
    tmp_path: Path, retl_cli: Any, clean_env: None
) -> None:
    # An in-memory DuckDB is read through Arrow batches, not attached: the type must survive.
    sql = """select 1 as id, '{"x": [true, null]}'::JSON as doc"""
    write_project(tmp_path, "duckdb:///:memory:", {"jsonl": FILES["jsonl"]}, sql)

    result = retl_cli("run", "--all", "--force", "--project-dir", str(tmp_path))

    assert result.code == 0, result.out + result.err
    assert jsonl_docs(tmp_path / "out/jsonl/docs.jsonl") == [{"x": [True, None]}]


class Receiver:
    """A webhook taking `POST /docs` {"records": [...]} and keeping every body it received."""

    def __init__(self, server: HTTPServer) -> None:
        self.bodies: list[Any] = []
        server.expect_request("/docs", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        self.bodies.append(json.loads(request.data))
        return Response('{"errors": []}', status=200, content_type="application/json")


@pytest.mark.postgres
def test_postgres_json_and_jsonb_reach_a_file_and_a_webhook_as_json_and_a_jsonb_table_equal(
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    httpserver: HTTPServer,
    retl_cli: Any,
    clean_env: None,
) -> None:
    receiver = Receiver(httpserver)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {pg_schema}.src (id int, doc jsonb, plain json)")
        for key, doc in DOCS:
            conn.execute(f"INSERT INTO {pg_schema}.src VALUES (%s, %s, %s)", (key, doc, doc))
        conn.execute(f"CREATE TABLE {pg_schema}.dst (id int PRIMARY KEY, doc jsonb)")
    destinations = {
        "jsonl": FILES["jsonl"],
        "hook": {
            "type": "http",
            "base_url": httpserver.url_for("/").rstrip("/"),
            "operations": {"upsert": {"method": "POST", "path": "/docs"}},
            "batch_key": "records",
            "errors_path": "errors",
        },
        "db": {"type": "postgres", "url": postgres_url},
    }
    sql = f"select id, doc, plain from {pg_schema}.src"
    write_project(tmp_path, postgres_url, destinations, sql)
    db_sync = tmp_path / "syncs" / "to_db.yml"
    db_sync.write_text(db_sync.read_text().replace("object: dst", f"object: {pg_schema}.dst"))
    file_sync = tmp_path / "syncs" / "to_jsonl.yml"  # the `json` column too
    file_sync.write_text(file_sync.read_text().replace("doc: doc", "doc: doc\n  plain: plain"))

    result = retl_cli("run", "--all", "--force", "--project-dir", str(tmp_path))

    assert result.code == 0, result.out + result.err
    records = [
        json.loads(line) for line in (tmp_path / "out/jsonl/docs.jsonl").read_text().splitlines()
    ]
    records.sort(key=lambda r: r["id"])
    assert [r["doc"] for r in records] == VALUES
    assert [r["plain"] for r in records] == VALUES
    (body,) = receiver.bodies
    assert sorted(body["records"], key=lambda r: r["id"]) == [
        {"id": key, "doc": value} for (key, _), value in zip(DOCS, VALUES, strict=True)
    ]
    with psycopg.connect(postgres_url) as conn:
        equal = conn.execute(
            f"SELECT d.id, d.doc IS NOT DISTINCT FROM s.doc, d.doc IS NULL FROM {pg_schema}.dst d "
            f"JOIN {pg_schema}.src s USING (id) ORDER BY d.id"
        ).fetchall()
    # every value equal, and only row 3 SQL NULL (row 2 holds the JSON null)
    assert equal == [
        (1, True, False),
        (2, True, False),
        (3, True, True),
        (4, True, False),
        (5, True, False),
    ]

    again = retl_cli("run", "--all", "--force", "--json", "--project-dir", str(tmp_path)).json()
    # nothing changed: nothing is sent again (the records' hashes are stable)
    assert {r["sync"]: r["counts"]["create"] + r["counts"]["update"] for r in again["runs"]} == {
        "to_db": 0,
        "to_hook": 0,
        "to_jsonl": 0,
    }
    assert len(receiver.bodies) == 1
