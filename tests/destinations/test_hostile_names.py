"""Names that need quoting: validate says how to write them, and once written right they are
delivered end to end (real PostgreSQL and MariaDB)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.usefixtures("clean_env")

SYNC = """\
warehouse: memory
source:
  sql: select 1 as id, 'ann' as "{column}"
destination:
  name: target
  object: '{object}'
mode: upsert
primary_key: id
mapping:
  id: id
  '{column}': '{column}'
"""


def project_with(root: Path, destination: str, object: str, column: str = "name") -> Path:
    (root / "syncs").mkdir()
    (root / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  memory:\n    url: 'duckdb:///:memory:'\n"
        f"destinations:\n  target:\n{destination}"
    )
    (root / "syncs" / "names.yml").write_text(SYNC.format(object=object, column=column))
    return root


def pg_destination(url: str) -> str:
    return f"    type: postgres\n    url: '{url}'\n"


def test_a_postgres_name_with_an_unquoted_double_quote_fails_validate_with_a_hint(
    tmp_path: Path, retl_cli: Callable[..., Any], postgres_url: str, pg_schema: str
) -> None:
    root = project_with(tmp_path, pg_destination(postgres_url), f'{pg_schema}.my"table')

    result = retl_cli("validate", "--project-dir", str(root))

    assert result.code == 1
    assert result.out.splitlines()[:2] == [
        f"syncs/names.yml:6: destination.object: '{pg_schema}.my\"table' is not a PostgreSQL "
        "table name: a name holding '\"' must be quoted",
        '    hint: write the name in double quotes and double the quote inside: public."my""table"',
    ]


def test_a_quoted_postgres_name_with_a_double_quote_is_delivered(
    tmp_path: Path, retl_cli: Callable[..., Any], postgres_url: str, pg_schema: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_schema}"."my""table" (id int primary key, name text)')
    root = project_with(tmp_path, pg_destination(postgres_url), f'{pg_schema}."my""table"')

    assert retl_cli("validate", "--connect", "--project-dir", str(root)).code == 0
    ran = retl_cli("run", "names", "--yes", "--project-dir", str(root))

    assert ran.code == 0, ran.err
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(f'SELECT id, name FROM "{pg_schema}"."my""table"').fetchall()
    assert rows == [(1, "ann")]


@pytest.fixture
def mariadb_table(mysql_url: str) -> Iterator[str]:
    """A MariaDB table whose second column's name holds a backtick."""
    name = f"names_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE `{name}` (id INT PRIMARY KEY, `we``ird` TEXT)")
    yield name
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE `{name}`")
    engine.dispose()


def test_a_mariadb_column_name_holding_a_backtick_is_read_and_delivered(
    tmp_path: Path, retl_cli: Callable[..., Any], mysql_url: str, mariadb_table: str
) -> None:
    destination = f"    type: sql\n    url: '{mysql_url}'\n"
    root = project_with(tmp_path, destination, mariadb_table, column="we`ird")

    checked = retl_cli("validate", "--connect", "--project-dir", str(root))
    assert checked.code == 0, checked.err
    ran = retl_cli("run", "names", "--yes", "--project-dir", str(root))

    assert ran.code == 0, ran.err
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT id, `we``ird` FROM `{mariadb_table}`").fetchall()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "ann")]
