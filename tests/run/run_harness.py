"""Helpers for end-to-end tests: a retl project in tmp_path, a DuckDB warehouse the test mutates between
runs, sync files written from dicts, the real CLI (`reverse_etl.cli.main`) and the Engine, and
the destination database (PostgreSQL or MariaDB) to look at what was really delivered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml

from reverse_etl.cli import main
from reverse_etl.config import Sync, load_project
from reverse_etl.plan.model import Plan
from reverse_etl.run import Engine, RunOptions, RunOutcome


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def output(self) -> str:
        return self.out + self.err


class RetlProject:
    """One project directory: `retl.yml`, `syncs/*.yml` and the warehouse `wh.duckdb`."""

    def __init__(
        self,
        root: Path,
        destinations: dict[str, dict[str, Any]],
        capsys: pytest.CaptureFixture[str],
        default_destination: str,
        default_object: str,
    ) -> None:
        self.root = root
        self.capsys = capsys
        self.default_destination = default_destination
        self.default_object = default_object
        (root / "syncs").mkdir(parents=True, exist_ok=True)
        config = {
            "version": 1,
            "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
            "destinations": destinations,
            # These tests read the keys and records a plan shows; how machine output masks
            # them is tests/cli/test_sample_privacy.py.
            "output": {"samples": "full"},
        }
        (root / "retl.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        duckdb.connect(str(self.warehouse_path)).close()

    # -- warehouse --------------------------------------------------------------------------

    @property
    def warehouse_path(self) -> Path:
        return self.root / "wh.duckdb"

    def warehouse(self, *statements: str) -> None:
        """Run statements on the warehouse and close it again (a DuckDB file has one writer)."""
        con = duckdb.connect(str(self.warehouse_path))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()

    def warehouse_rows(self, query: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.warehouse_path), read_only=True)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()

    def set_source(self, rows: Sequence[tuple[Any, ...]], table: str = "src") -> None:
        """Replace the source table with `(id, name)` rows."""
        con = duckdb.connect(str(self.warehouse_path))
        try:
            con.execute(f"CREATE OR REPLACE TABLE {table} (id INTEGER, name VARCHAR)")
            if rows:
                con.executemany(f"INSERT INTO {table} VALUES (?, ?)", list(rows))
        finally:
            con.close()

    # -- syncs ------------------------------------------------------------------------------

    def sync_document(self, **fields: Any) -> dict[str, Any]:
        document: dict[str, Any] = {
            "warehouse": "wh",
            "source": {"sql": "select * from src"},
            "destination": {"name": self.default_destination, "object": self.default_object},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
        }
        document.update(fields)
        return document

    def write_sync(self, name: str = "contacts", **fields: Any) -> Path:
        """Write `syncs/<name>.yml`: a sync of `select * from src` into the default object,
        mode upsert, mapping id and name, with `fields` replacing or adding top-level keys."""
        path = self.root / "syncs" / f"{name}.yml"
        text = yaml.safe_dump(self.sync_document(**fields), sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    # -- the command line -------------------------------------------------------------------

    def cli(self, *args: str) -> CliResult:
        """`retl ARGS --project-dir ROOT` in this process, exactly as the console script."""
        self.capsys.readouterr()
        code: int = 0
        try:
            main([*args, "--project-dir", str(self.root)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    def plan_json(self, sync: str = "contacts", *options: str) -> dict[str, Any]:
        """The sync's entry of `retl plan --json`."""
        result = self.cli("plan", sync, "--json", *options)
        assert result.code == 0, result.output
        (document,) = result.json()["syncs"]
        assert isinstance(document, dict)
        return document

    def plan_counts(self, sync: str = "contacts", *options: str) -> dict[str, int]:
        counts = self.plan_json(sync, *options)["counts"]
        assert isinstance(counts, dict)
        return counts

    def run_json(self, sync: str = "contacts", *options: str, code: int = 0) -> dict[str, Any]:
        """The sync's entry of `retl run --json`, asserting the exit code."""
        result = self.cli("run", sync, "--json", *options)
        assert result.code == code, result.output
        (document,) = result.json()["runs"]
        assert isinstance(document, dict)
        return document

    def dead_letters(self, sync: str = "contacts") -> list[dict[str, Any]]:
        result = self.cli("dlq", sync, "--json", "--limit", "100000")
        assert result.code == 0, result.output
        letters = result.json()["dead_letters"]
        assert isinstance(letters, list)
        return letters

    def runs(self, sync: str = "contacts") -> list[dict[str, Any]]:
        """`retl runs SYNC --json`, newest first."""
        result = self.cli("runs", sync, "--json", "--limit", "1000")
        assert result.code == 0, result.output
        runs = result.json()["runs"]
        assert isinstance(runs, list)
        return runs

    # -- the engine -------------------------------------------------------------------------

    def engine(self) -> Engine:
        return Engine(load_project(self.root))

    def sync(self, name: str = "contacts") -> Sync:
        return load_project(self.root).syncs[name]

    def run(self, name: str = "contacts", **options: Any) -> RunOutcome:
        project = load_project(self.root)
        return Engine(project).run(project.syncs[name], RunOptions(**options))

    def plan(self, name: str = "contacts", **options: Any) -> Plan:
        project = load_project(self.root)
        return Engine(project).plan(project.syncs[name], **options)

    @property
    def state_dir(self) -> Path:
        return self.root / ".retl" / "state"

    def state_keys(self, name: str = "contacts") -> set[str]:
        """Keys in the sync's snapshot (read-only, like `retl state show`)."""
        path = self.state_dir / f"{name}.duckdb"
        con = duckdb.connect(str(path), read_only=True)
        try:
            return {str(row[0]) for row in con.execute("SELECT key FROM snapshot").fetchall()}
        finally:
            con.close()

    def state_show(self, name: str = "contacts") -> dict[str, Any]:
        result = self.cli("state", "show", name, "--json")
        assert result.code == 0, result.output
        document = result.json()
        assert isinstance(document, dict)
        return document


class PostgresDb:
    """The destination PostgreSQL database, autocommit, with one fresh schema for the test."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.conn: psycopg.Connection[tuple[Any, ...]] = psycopg.connect(url, autocommit=True)

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> None:
        self.conn.execute(statement, params)

    def rows(self, table: str = "contacts", columns: str = "*") -> list[tuple[Any, ...]]:
        return self.conn.execute(
            f"SELECT {columns} FROM {self.schema}.{table} ORDER BY 1"
        ).fetchall()

    def count(self, table: str = "contacts") -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {self.schema}.{table}").fetchone()
        assert row is not None
        return int(row[0])

    def arrow(self, query: str) -> pa.Table:
        cur = self.conn.execute(query)
        names = [d.name for d in cur.description or []]
        rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    def close(self) -> None:
        self.conn.close()


class MariaDb:
    """The destination MariaDB database; tables get a per-test prefix and are dropped after."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:8]}_"
        self.engine = sa.create_engine(url)
        self.tables: list[str] = []

    def table(self, name: str) -> str:
        full = self.prefix + name
        self.tables.append(full)
        return full

    def execute(self, statement: str, params: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement), params or {})

    def rows(self, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.text(f"SELECT {columns} FROM {table} ORDER BY 1"))
            return [tuple(r) for r in result]

    def close(self) -> None:
        with self.engine.begin() as conn:
            for table in self.tables:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        self.engine.dispose()
