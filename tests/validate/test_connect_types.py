"""`retl validate --connect` compares the source query's column types (from its LIMIT 0) with
the destination's column types: a mapped column whose values could be stored altered is a
warning on its mapping line (those records are rejected at run time), one that can never fit
is an error; names longer than the database keeps are refused (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import yaml

from reverse_etl.cli import main

pytestmark = pytest.mark.usefixtures("clean_env")

SOURCE = (
    "select 1 as id, 1234.5678::DECIMAL(18,4) as price, 1.5::DOUBLE as qty, "
    "TIMESTAMP '2024-01-02 10:30' as day, 'x' as note, DATE '2024-01-02' as born"
)


def validate(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    destination: dict[str, Any],
    object: str,
    mapping: dict[str, str],
) -> tuple[int, list[dict[str, Any]]]:
    (root / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///:memory:"}},
        "destinations": {"dest": destination},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    sync = {
        "warehouse": "wh",
        "source": {"sql": SOURCE},
        "destination": {"name": "dest", "object": object},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": mapping,
    }
    (root / "syncs" / "s.yml").write_text(yaml.safe_dump(sync, sort_keys=False), encoding="utf-8")
    capsys.readouterr()
    try:
        main(["validate", "--connect", "--json", "--project-dir", str(root)])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr().out
    problems = json.loads(out)["problems"]
    return code, [{k: p[k] for k in ("line", "field", "message", "severity")} for p in problems]


@pytest.mark.postgres
def test_postgres_columns_that_could_alter_values_are_warnings_on_their_mapping_lines(
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {pg_schema}.items (id bigint PRIMARY KEY, price numeric(10,2), "
            "qty integer, day date, note text, born integer)"
        )
    monkeypatch.setenv("PG_URL", postgres_url)
    mapping = {f: f for f in ("id", "price", "qty", "day", "note", "born")}

    code, problems = validate(
        tmp_path, capsys, {"type": "postgres", "url": "${PG_URL}"}, f"{pg_schema}.items", mapping
    )

    assert code == 1
    assert problems == [
        {
            "line": 12,
            "field": "mapping.price",
            "message": "field 'price': source DECIMAL(18,4) into numeric(10,2): values with "
            "more than 2 decimals and values of 100000000 or more are rejected at run time",
            "severity": "warning",
        },
        {
            "line": 13,
            "field": "mapping.qty",
            "message": "field 'qty': source DOUBLE into integer: values with a fraction are "
            "rejected at run time",
            "severity": "warning",
        },
        {
            "line": 14,
            "field": "mapping.day",
            "message": "field 'day': source TIMESTAMP into date: values with a time of day are "
            "rejected at run time",
            "severity": "warning",
        },
        {
            "line": 16,
            "field": "mapping.born",
            "message": "field 'born': source DATE into integer: these types never convert; map "
            "a column of a matching type",
            "severity": "error",
        },
    ]


@pytest.mark.postgres
def test_a_postgres_column_name_over_63_bytes_is_an_error_on_its_mapping_line(
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PG_URL", postgres_url)
    long = "n" * 64

    code, problems = validate(
        tmp_path,
        capsys,
        {"type": "postgres", "url": "${PG_URL}"},
        f"{pg_schema}.items",
        {"id": "id", long: "note"},
    )

    assert code == 1
    assert [(p["field"], p["severity"]) for p in problems] == [(f"mapping.{long}", "error")]
    assert (
        "has a name of 64 bytes: PostgreSQL keeps only the first 63 bytes" in problems[0]["message"]
    )


@pytest.mark.mysql
def test_mariadb_decimal_too_narrow_for_the_source_is_a_warning(
    mysql_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = sa.create_engine(mysql_url)
    table = f"types_{tmp_path.name[-8:].replace('-', '_')}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id INT PRIMARY KEY, price DECIMAL(6,2))")
    monkeypatch.setenv("MYSQL_URL", mysql_url)
    try:
        code, problems = validate(
            tmp_path,
            capsys,
            {"type": "sql", "url": "${MYSQL_URL}"},
            table,
            {"id": "id", "price": "price"},
        )
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()

    assert code == 0  # warnings only
    assert problems == [
        {
            "line": 12,
            "field": "mapping.price",
            "message": "field 'price': source DECIMAL(18,4) into decimal(6,2): values with more "
            "than 2 decimals and values of 10000 or more are rejected at run time",
            "severity": "warning",
        }
    ]


def test_plain_validate_refuses_a_postgres_table_name_postgresql_would_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "syncs").mkdir()
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///:memory:"}},
        "destinations": {"pg": {"type": "postgres", "url": "postgresql://u@localhost/db"}},
    }
    (tmp_path / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for name, suffix in (("one", "_one"), ("two", "_two")):
        sync = {
            "warehouse": "wh",
            "source": {"sql": "select 1 as id"},
            "destination": {"name": "pg", "object": "public." + "t" * 60 + suffix},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id"},
        }
        (tmp_path / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(sync), encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["validate", "--json", "--project-dir", str(tmp_path)])

    assert exit.value.code == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["file"], p["field"], p["severity"]) for p in problems] == [
        ("syncs/one.yml", "destination.object", "error"),
        ("syncs/two.yml", "destination.object", "error"),
    ]
    assert (
        "has a name of 64 bytes: PostgreSQL keeps only the first 63 bytes"
        in (problems[0]["message"])
    )
