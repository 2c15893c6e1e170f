"""DuckDB through its own Python API: no SQLAlchemy, Arrow batches straight from the engine.

Files open read-only, so several syncs (and other readers) can use one warehouse file at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import duckdb
import pyarrow as pa

from reverse_etl.errors import WarehouseError
from reverse_etl.redact import mask_url, register_url
from reverse_etl.warehouse.base import (
    DEFAULT_BATCH_ROWS,
    Column,
    Warehouse,
    check_batch_rows,
    closed_error,
    database_message,
    not_a_query_error,
    query_error,
    source_statement,
    timeout_error,
)

T = TypeVar("T")

MEMORY = ":memory:"
# The catalog name of a warehouse file attached to the engine's connection (see `attached`).
ATTACHED = "retl_warehouse"


def home_catalog(con: duckdb.DuckDBPyConnection) -> str:
    """The default catalog of `con` (where the engine keeps its tables)."""
    row = con.execute("SELECT current_database()").fetchall()[0]
    return str(row[0])


@dataclass(frozen=True)
class DuckDBTarget:
    """Where a `duckdb://` URL points: a database path (or `:memory:`), settings, access mode."""

    database: str
    config: dict[str, str | bool | int | float | list[str]]
    read_only: bool

    @property
    def is_file(self) -> bool:
        return self.database != MEMORY and not self.database.startswith(("md:", "motherduck:"))


def parse_duckdb_url(url: str, project_root: Path) -> DuckDBTarget:
    """Resolve a `duckdb://` URL the way retl.yml means it.

    `duckdb:///rel/path.duckdb` is relative to the project root, `duckdb:////abs/path.duckdb` is
    absolute, `duckdb:///:memory:` (or `duckdb://`) is in memory. Query parameters are DuckDB
    settings; `access_mode=read_write` opens the file for writing instead of read-only.
    """
    rest = url.split("://", 1)[1] if "://" in url else ""
    location, _, query = rest.partition("?")
    if location and not location.startswith("/"):
        raise ValueError("a DuckDB URL has no host: write duckdb:///relative/path.duckdb")
    path = unquote(location[1:])
    settings = dict(parse_qsl(query, keep_blank_values=True))
    access_mode = settings.pop("access_mode", "read_only").lower()
    config: dict[str, str | bool | int | float | list[str]] = dict(settings)
    if path in ("", MEMORY):
        return DuckDBTarget(MEMORY, config, read_only=False)
    if not path.startswith(("md:", "motherduck:")):
        resolved = Path(path).expanduser()
        if not resolved.is_absolute():
            resolved = project_root / resolved
        path = str(resolved)
    return DuckDBTarget(path, config, read_only=access_mode != "read_write")


class _Budget:
    """The query_timeout of one query, spent only while DuckDB works (not while the caller
    handles a batch): each call into DuckDB arms a timer for what is left, which interrupts it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.spent = 0.0

    @contextmanager
    def armed(self, connection: duckdb.DuckDBPyConnection) -> Iterator[threading.Event]:
        fired = threading.Event()
        if self.seconds is None:
            yield fired
            return

        def interrupt() -> None:
            fired.set()
            connection.interrupt()

        timer = threading.Timer(max(self.seconds - self.spent, 0.0), interrupt)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            yield fired
        finally:
            timer.cancel()
            timer.join()
            self.spent += time.monotonic() - started


def _as_json(batch: pa.RecordBatch, columns: set[int], schema: pa.Schema) -> pa.RecordBatch:
    arrays = [
        pa.ExtensionArray.from_storage(pa.json_(), column.cast(pa.string()))
        if i in columns
        else column
        for i, column in enumerate(batch.columns)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class DuckDBWarehouse(Warehouse):
    """A DuckDB file (read-only unless the URL says otherwise) or an in-memory database."""

    dialect = "duckdb"

    def __init__(
        self, name: str, url: str, project_root: Path, query_timeout: float | None = None
    ) -> None:
        self.name = name
        self.url = mask_url(url)
        self.query_timeout = query_timeout
        register_url(url)  # so that a driver message repeating the password is masked
        # Each open stream: its cursor and the DuckDB reader, closed with the warehouse.
        self._open: dict[duckdb.DuckDBPyConnection, Any] = {}
        try:
            target = parse_duckdb_url(url, project_root)
        except ValueError as exc:
            raise WarehouseError(
                f"warehouse '{name}' has an invalid DuckDB URL {self.url}: {exc}",
                hint="use duckdb:///relative/path.duckdb, duckdb:////absolute/path.duckdb "
                "or duckdb:///:memory:",
            ) from None
        self.database = target.database
        self._attachable = target.is_file and target.read_only and not target.config
        if target.is_file and target.read_only and not Path(target.database).exists():
            raise WarehouseError(
                f"DuckDB file '{target.database}' of warehouse '{name}' does not exist",
                hint=f"check warehouses.{name}.url in retl.yml; relative paths resolve from "
                f"the project root ({project_root})",
            )
        try:
            self._connection = duckdb.connect(
                target.database, read_only=target.read_only, config=target.config
            )
            if "enable_progress_bar" not in target.config:
                # A progress bar on stdout would corrupt --json.
                self._connection.execute("SET enable_progress_bar = false")
        except Exception as exc:
            raise self._open_error(target, exc) from None

    def _open_error(self, target: DuckDBTarget, exc: Exception) -> WarehouseError:
        detail = database_message(exc)
        if "lock" in detail.lower() and target.is_file:
            return WarehouseError(
                f"DuckDB file '{target.database}' of warehouse '{self.name}' is locked by "
                f"another process that has it open for writing: {detail}",
                hint="DuckDB allows one writing process or many readers: let that process "
                "(a DuckDB shell, notebook or dbt run) finish or close it, then retry",
            )
        return WarehouseError(
            f"could not open DuckDB database '{target.database}' of warehouse '{self.name}': "
            f"{detail}",
            hint=f"check warehouses.{self.name}.url in retl.yml",
        )

    def columns(self, sql: str) -> list[Column]:
        cursor = self._cursor()
        budget = _Budget(self.query_timeout)
        try:
            relation = self._call(cursor, budget, lambda: cursor.sql(source_statement(sql)))
            if relation is None:
                raise not_a_query_error(self.name)
            return [
                Column(name, str(type_))
                for name, type_ in zip(relation.columns, relation.types, strict=True)
            ]
        finally:
            self._release(cursor)

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        check_batch_rows(batch_rows)
        cursor = self._cursor()
        budget = _Budget(self.query_timeout)
        try:
            relation = self._call(cursor, budget, lambda: cursor.sql(source_statement(sql)))
            if relation is None:
                raise not_a_query_error(self.name)
            reader = self._call(cursor, budget, lambda: relation.to_arrow_reader(batch_rows))
        except BaseException:
            self._release(cursor)
            raise
        self._open[cursor] = reader
        # DuckDB hands JSON over as plain strings: typed `arrow.json` again, so the engine
        # knows them for JSON (as when the file is attached, where the JSON type is kept).
        json_columns = {i for i, type_ in enumerate(relation.types) if str(type_).upper() == "JSON"}
        schema = reader.schema
        for i in sorted(json_columns):
            schema = schema.set(i, pa.field(schema.field(i).name, pa.json_()))
        batches = self._batches(cursor, reader, budget, batch_rows)
        if json_columns:
            batches = (_as_json(batch, json_columns, schema) for batch in batches)
        return pa.RecordBatchReader.from_batches(schema, batches)

    def _batches(
        self,
        cursor: duckdb.DuckDBPyConnection,
        reader: Any,
        budget: _Budget,
        batch_rows: int,
    ) -> Iterator[pa.RecordBatch]:
        def read_next() -> pa.RecordBatch | None:
            try:
                return reader.read_next_batch()
            except StopIteration:
                return None

        try:
            while True:
                if cursor not in self._open:
                    raise closed_error(self.name)
                batch = self._call(cursor, budget, read_next)
                if batch is None:
                    break
                # DuckDB keeps batches at or under the requested size; slicing is only a guard.
                for offset in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(offset, batch_rows)
        finally:
            self._release(cursor)

    def _call(self, cursor: duckdb.DuckDBPyConnection, budget: _Budget, call: Callable[[], T]) -> T:
        """Run one call into DuckDB under the query's timeout, as a clean WarehouseError."""
        with budget.armed(cursor) as fired:
            try:
                return call()
            except WarehouseError:
                raise
            except Exception as exc:
                if fired.is_set() and self.query_timeout is not None:
                    raise timeout_error(self.name, self.query_timeout) from None
                raise query_error(self.name, database_message(exc)) from None

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        try:
            return self._connection.cursor()
        except Exception as exc:
            raise WarehouseError(
                f"warehouse '{self.name}' is closed: {database_message(exc)}"
            ) from None

    def _release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        reader = self._open.pop(cursor, None)
        if reader is not None:
            reader.close()
        cursor.close()

    @contextmanager
    def attached(self, con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[str | None]:
        """Run the sync's query inside `con` instead of streaming it: the file is attached
        read-only as the default catalog of `con` for the duration, so DuckDB scans it in
        parallel with no Arrow hop in between. Yields the statement to read from (bound here,
        so SQL errors are `WarehouseError`s), or None when this warehouse cannot be attached
        (in memory, MotherDuck, writable, or with settings in its URL): stream it then.

        Inside, unqualified names resolve in the warehouse: the caller qualifies its own tables
        with `home_catalog(con)` (taken before). Calls into DuckDB there run under the
        query_timeout; a timeout is a `WarehouseError`."""
        if not self._attachable:
            yield None
            return
        home = home_catalog(con)
        con.execute(
            f"ATTACH '{self.database.replace(chr(39), chr(39) * 2)}' AS {ATTACHED} (READ_ONLY)"
        )
        budget = _Budget(self.query_timeout)
        try:
            con.execute(f"USE {ATTACHED}")
            statement = source_statement(sql)
            with budget.armed(con) as fired:
                try:
                    relation = con.sql(statement)
                except Exception as exc:
                    if fired.is_set() and self.query_timeout is not None:
                        raise timeout_error(self.name, self.query_timeout) from None
                    raise query_error(self.name, database_message(exc)) from None
                if relation is None:
                    raise not_a_query_error(self.name)
                try:
                    yield statement
                except duckdb.InterruptException:
                    if fired.is_set() and self.query_timeout is not None:
                        raise timeout_error(self.name, self.query_timeout) from None
                    raise
        finally:
            with contextlib.suppress(duckdb.Error):
                con.execute(f"USE {home}")
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DETACH {ATTACHED}")

    def close(self) -> None:
        for cursor in list(self._open):
            self._release(cursor)
        self._connection.close()
