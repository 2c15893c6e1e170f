"""Fixtures for end-to-end tests: a retl project in tmp_path whose destination is a real
PostgreSQL schema or MariaDB database (helpers in run_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from run_harness import MariaDb, PostgresDb, RetlProject


@pytest.fixture
def pg(postgres_url: str, pg_schema: str) -> Iterator[PostgresDb]:
    db = PostgresDb(postgres_url, pg_schema)
    db.execute(f"CREATE TABLE {pg_schema}.contacts (id integer PRIMARY KEY, name text)")
    yield db
    db.close()


@pytest.fixture
def project(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pg: PostgresDb,
) -> RetlProject:
    """A project whose destination `pg` is the test's PostgreSQL schema; the default sync
    object is `<schema>.contacts (id integer primary key, name text)`."""
    monkeypatch.setenv("PG_URL", pg.url)
    return RetlProject(
        tmp_path / "project",
        {"pg": {"type": "postgres", "url": "${PG_URL}"}},
        capsys,
        default_destination="pg",
        default_object=f"{pg.schema}.contacts",
    )


@pytest.fixture
def maria(mysql_url: str) -> Iterator[MariaDb]:
    db = MariaDb(mysql_url)
    yield db
    db.close()


@pytest.fixture
def maria_project(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    maria: MariaDb,
) -> RetlProject:
    """A project whose destination `maria` is the MariaDB test database (type sql); the default
    sync object is a fresh `contacts (id int primary key, name varchar(100))`."""
    table = maria.table("contacts")
    maria.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(100))")
    monkeypatch.setenv("MYSQL_URL", maria.url)
    return RetlProject(
        tmp_path / "project",
        {"maria": {"type": "sql", "url": "${MYSQL_URL}"}},
        capsys,
        default_destination="maria",
        default_object=table,
    )
