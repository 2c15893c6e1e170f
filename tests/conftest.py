"""Shared fixtures: real PostgreSQL and MariaDB servers on loopback.

Tests that need a server skip with a clear reason when none answers, except under CI=true,
where a missing server is a failure.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["servers.fixtures"]

POSTGRES_URL = os.environ.get("RETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("RETL_TEST_MYSQL_URL", "mysql+pymysql://root:@127.0.0.1:3306/test")


def _unavailable(what: str, url: str, exc: Exception) -> None:
    message = f"{what} not reachable at {url} ({exc.__class__.__name__}: {exc})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true the server must run")
    pytest.skip(f"{message}; set RETL_TEST_{what.upper()}_URL or start the server")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL database (psycopg style: postgresql://...)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            pass
    except Exception as exc:
        _unavailable("postgres", POSTGRES_URL, exc)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """SQLAlchemy URL of the test MariaDB/MySQL database."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(MYSQL_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        _unavailable("mysql", MYSQL_URL, exc)
    return MYSQL_URL


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@dataclass
class CliResult:
    """Exit code and captured output of one in-process `retl` command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def retl_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `retl ARGS...` in-process through the real entry point (error rendering included)."""
    from reverse_etl.cli import main

    def run(*args: str) -> CliResult:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        return CliResult(int(exited.value.code or 0), captured.out, captured.err)

    return run


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RETL_*, GITHUB_*, GIT_* or FORCE_COLOR variables from the developer's shell."""
    for key in list(os.environ):
        if key.startswith(("RETL_", "GITHUB_", "FORCE_COLOR", "GIT_")):
            monkeypatch.delenv(key)


@pytest.fixture
def memory_destination(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Register `type: memory` (tests/memory_destination.py) for one test; yields `STORES`,
    the process-global stores by name, emptied afterwards."""
    from memory_destination import STORES, MemoryDestination

    from reverse_etl.destinations import base

    MemoryDestination.type_name = "memory"
    monkeypatch.setitem(base._REGISTRY, "memory", MemoryDestination)
    yield STORES
    STORES.clear()


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Each test starts with no registered secret (the registry is process-wide by design)."""
    from reverse_etl.redact import clear_secrets

    clear_secrets()
    yield
    clear_secrets()


LOCAL_RETL_YML = """version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: sql
    url: sqlite:///out/app.sqlite
    create_tables: true
"""
LOCAL_SYNC = """warehouse: memory
source:
  sql: {sql}
destination:
  name: app
  object: people
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
"""


@pytest.fixture
def local_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Callable[[str], Path]:
    """A project needing no server (DuckDB in memory into SQLite) with one sync `people` whose
    SQL returns `id` and `email`; the working directory is its root."""

    def make(sql: str = "select 1 as id, 'ana@example.com' as email") -> Path:
        (tmp_path / "syncs").mkdir()
        (tmp_path / "retl.yml").write_text(LOCAL_RETL_YML)
        (tmp_path / "syncs" / "people.yml").write_text(LOCAL_SYNC.format(sql=sql))
        monkeypatch.chdir(tmp_path)
        return tmp_path

    return make
