"""Values keep their meaning from a PostgreSQL warehouse to a PostgreSQL table and to a JSON
Lines file: an interval keeps its months, a JSON `null` stays JSON, a 42-digit numeric and a
`real` arrive exactly (issue: `-1 mon` stored as -30 days, jsonb null as SQL NULL, numeric
beyond 38 digits and intervals crashed the run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.postgres


def test_intervals_json_and_wide_numbers_arrive_as_the_warehouse_holds_them(
    postgres_url: str, pg_schema: str, tmp_path: Path, retl_cli: Any
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {pg_schema}.src AS SELECT 1 AS id, "
            "123456789012345678901234567890123456789012.5::numeric AS big, "
            "interval '-1 mon 2 days' AS iv, 'null'::jsonb AS jn, NULL::jsonb AS sqlnull, "
            "0.1::real AS r"
        )
        conn.execute(
            f"CREATE TABLE {pg_schema}.dst (id int PRIMARY KEY, big numeric, iv interval, "
            "jn jsonb, sqlnull jsonb, r real)"
        )
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(
        f"version: 1\nwarehouses:\n  pg:\n    url: {postgres_url}\n"
        f"destinations:\n  db:\n    type: postgres\n    url: {postgres_url}\n"
        "  out:\n    type: file\n    path: out\n"
    )
    sync = (
        f"warehouse: pg\nsource:\n  sql: select * from {pg_schema}.src\ndestination:\n"
        "  name: {name}\n  object: {object}\nmode: upsert\nprimary_key: id\n"
        "mapping: {{id: id, big: big, iv: iv, jn: jn, sqlnull: sqlnull, r: r}}\n"
    )
    (tmp_path / "syncs" / "to_db.yml").write_text(sync.format(name="db", object=f"{pg_schema}.dst"))
    (tmp_path / "syncs" / "to_file.yml").write_text(sync.format(name="out", object="values"))

    result = retl_cli("run", "--all", "--force", "--project-dir", str(tmp_path))

    assert result.code == 0, result.out + result.err
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(
            f"SELECT big::text, iv = interval '-1 mon 2 days', jn = 'null'::jsonb, "
            f"sqlnull IS NULL, r FROM {pg_schema}.dst"
        ).fetchone()
    assert row == ("123456789012345678901234567890123456789012.5", True, True, True, 0.1)
    record = json.loads((tmp_path / "out" / "values.jsonl").read_text())
    assert record["big"] == "123456789012345678901234567890123456789012.5"
    assert record["iv"] == "P-1M2D" and record["r"] == 0.1
    # a JSON `null` and SQL NULL are both JSON null in a JSON file (the jsonb table above
    # tells them apart)
    assert record["jn"] is None and record["sqlnull"] is None
