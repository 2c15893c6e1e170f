"""One read-write session on a warehouse, for the warehouse state backend: queries in one
consistent snapshot, Arrow streams, bulk loads into a stage table, transactions.

PostgreSQL goes through psycopg (server-side cursors to read, COPY FROM STDIN to load) and
DuckDB through its own API (the file opened for writing: retl's schema lives in it). Other
warehouses get their SQL generated (see `plan.warehouse_diff`) but no session yet.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from reverse_etl import interrupt
from reverse_etl.errors import RetlError, WarehouseError
from reverse_etl.redact import mask_url, register_url
from reverse_etl.warehouse.base import cancelled_error, database_message, source_statement
from reverse_etl.warehouse.rows_to_arrow import BatchBuilder, describe

# PostgreSQL float4 and float8 type OIDs.
_POSTGRES_FLOATS = {700, 701}
_DUCKDB_FLOATS = {"FLOAT", "DOUBLE", "REAL"}
_QUERY_CANCELED = "57014"
#: How long closing a session waits for the server to take a cancel request.
CANCEL_TIMEOUT_SECONDS = 2.0


# Rows per chunk of CSV a bulk load writes (a few megabytes).
_LOAD_CHUNK_ROWS = 50_000


def _csv_loadable(type_: pa.DataType) -> bool:
    """Whether PostgreSQL reads pyarrow's CSV text of this type back as the same value."""
    return bool(
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_boolean(type_)
        or pa.types.is_integer(type_)
    )


def _csv(batch: pa.RecordBatch) -> bytes:
    """CSV lines for COPY: every string is quoted, so an empty one stays apart from a NULL
    (an empty unquoted field)."""
    out = io.BytesIO()
    pa_csv.write_csv(batch, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


class SessionError(WarehouseError):
    """A statement failed; `sqlstate` is the database's error code where it has one."""

    def __init__(self, message: str, hint: str | None = None, sqlstate: str | None = None):
        super().__init__(message, hint)
        self.sqlstate = sqlstate


class WarehouseSession(ABC):
    """A connection that can read and write; use it as a context manager."""

    name: str
    #: sqlglot's dialect name ("postgres", "duckdb").
    dialect: str

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (none for a statement without a result)."""

    @abstractmethod
    def stream(self, sql: str, batch_rows: int) -> pa.RecordBatchReader:
        """The rows of a query as Arrow batches in bounded memory; read it to its end before
        the next statement."""

    @abstractmethod
    def float_columns(self, sql: str) -> dict[str, bool]:
        """Each result column of a query, and whether it holds floating-point numbers."""

    @abstractmethod
    def load(self, table: str, data: pa.Table) -> None:
        """Append rows to a (stage) table in bulk; the columns are named as in `data`."""

    @abstractmethod
    def begin(self, *, snapshot: bool = False) -> None:
        """Start a transaction; `snapshot`: read-only, every query sees the same data."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def idle(self) -> bool:
        """Whether the connection waits for a statement (none runs, no stream is open): only
        then can a rollback not wait on the server."""
        return True

    def abort(self) -> None:
        """End a transaction that cannot be rolled back without waiting (interrupted, or a
        statement or stream still open): the session is unusable afterwards."""
        with contextlib.suppress(Exception):
            self.rollback()

    @contextlib.contextmanager
    def transaction(self, *, snapshot: bool = False) -> Iterator[None]:
        """One transaction: committed when the block ends, rolled back when it raises; when
        interrupted (or a statement still runs), aborted instead (`abort`), never waited on."""
        self.begin(snapshot=snapshot)
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception) and self.idle():
                with contextlib.suppress(Exception):
                    self.rollback()
            else:
                self.abort()
            raise
        self.commit()

    def __enter__(self) -> WarehouseSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _error(
        self, exc: BaseException, sqlstate: str | None = None
    ) -> SessionError | interrupt.RunInterrupted:
        """The error of a failed statement; a statement cancelled because retl is stopping
        is the interruption itself."""
        if sqlstate == _QUERY_CANCELED:
            signum = interrupt.requested()
            if signum is not None:
                return interrupt.RunInterrupted(signum)
            cancelled = cancelled_error(self.name, database_message(exc))
            return SessionError(cancelled.message, cancelled.hint, sqlstate)
        return SessionError(
            f"warehouse '{self.name}' refused a statement of the warehouse state backend: "
            f"{database_message(exc)}",
            sqlstate=sqlstate,
        )


class PostgresSession(WarehouseSession):
    dialect = "postgres"

    def __init__(self, name: str, url: str, query_timeout: float | None = None) -> None:
        import psycopg

        self.name = name
        register_url(url)
        scheme, _, rest = url.partition("://")
        conninfo = f"{scheme.split('+', 1)[0]}://{rest}"
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise self._connect_error(url, database_message(exc)) from None
        self._streams = 0  # COPY streams open: each holds the connection until it ends
        self._reading = False  # in a read-only snapshot transaction (planning)
        self._closing = threading.RLock()  # a cancel request and `close`, one at a time
        # A signal that stops retl cancels the statement running here (from another thread).
        self._cancel_registration = contextlib.ExitStack()
        self._cancel_registration.enter_context(interrupt.cancelling(self._cancel))
        # Text of timestamps with a time zone in UTC, as the local engine writes them.
        self.execute("SET TIME ZONE 'UTC'")
        self.execute("SET intervalstyle = 'iso_8601'")  # as the source is read (intervals)
        if query_timeout is not None:
            self.execute(f"SET statement_timeout = {int(query_timeout * 1000)}")

    def _connect_error(self, url: str, reason: str) -> RetlError:
        """The error of a connection that failed (the URL masked)."""
        return WarehouseError(
            f"cannot connect to warehouse '{self.name}' at {mask_url(url)}: {reason}",
            hint=f"check warehouses.{self.name}.url in retl.yml",
        )

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql.encode(), params or None)  # bytes: no %-placeholders parsed
                return list(cursor.fetchall()) if cursor.description else []
        except psycopg.Error as exc:
            raise self._error(exc, exc.sqlstate) from None

    def stream(self, sql: str, batch_rows: int) -> pa.RecordBatchReader:
        """Read with `COPY (query) TO STDOUT`: unlike a cursor, PostgreSQL may plan it in
        parallel, and the rows stream without a round trip per batch.

        The COPY holds the connection (psycopg's lock) until the stream ends: a failure or an
        interruption ends it at once, so that nothing waits for that lock."""
        import psycopg

        try:
            with self._conn.cursor() as cursor:
                cursor.execute(f"SELECT * FROM ({sql}\n) AS retl_result LIMIT 0".encode())
                description = list(cursor.description or [])
        except psycopg.Error as exc:
            raise self._error(exc, exc.sqlstate) from None
        hints = describe("postgresql", description)
        cursor = self._conn.cursor()
        copy_context = cursor.copy(f"COPY ({sql}\n) TO STDOUT".encode())
        self._streams += 1

        def end() -> None:
            # psycopg releases the connection; a COPY left mid-result is aborted by the
            # caller's transaction (see `idle`), never drained here.
            self._streams -= 1
            with contextlib.suppress(Exception):
                copy_context.__exit__(None, None, None)
            with contextlib.suppress(Exception):
                cursor.close()

        try:
            copy = copy_context.__enter__()
            copy.set_types([c.type_code for c in description])
            rows = copy.rows()
            first = list(itertools.islice(rows, batch_rows))
            builder = BatchBuilder(self.name, hints, first)
            batch = builder.batch(first)
            del first
        except psycopg.Error as exc:
            end()
            raise self._error(exc, exc.sqlstate) from None
        except BaseException:
            end()
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                if batch.num_rows:
                    yield batch
                while chunk := list(itertools.islice(rows, batch_rows)):
                    yield builder.batch(chunk)
            except psycopg.Error as exc:
                raise self._error(exc, exc.sqlstate) from None
            finally:
                end()

        return pa.RecordBatchReader.from_batches(builder.schema, batches())

    def float_columns(self, sql: str) -> dict[str, bool]:
        import psycopg

        try:
            with self._conn.cursor() as cursor:
                cursor.execute(
                    f"SELECT * FROM ({source_statement(sql)}\n) AS retl_source LIMIT 0".encode()
                )
                return {c.name: c.type_code in _POSTGRES_FLOATS for c in cursor.description or []}
        except psycopg.Error as exc:
            raise self._error(exc, exc.sqlstate) from None

    def load(self, table: str, data: pa.Table) -> None:
        """COPY FROM STDIN; text, boolean and number columns go as CSV that pyarrow writes (at
        C speed: a million rows of state take a second, not a minute of per-value Python)."""
        import psycopg

        columns = ", ".join('"' + c.replace('"', '""') + '"' for c in data.column_names)
        as_csv = all(_csv_loadable(f.type) for f in data.schema)
        options = " (FORMAT csv)" if as_csv else ""
        try:
            with (
                self._conn.cursor() as cursor,
                cursor.copy(f"COPY {table} ({columns}) FROM STDIN{options}".encode()) as copy,
            ):
                if as_csv:
                    for batch in data.to_batches(max_chunksize=_LOAD_CHUNK_ROWS):
                        copy.write(_csv(batch))
                else:
                    for row in zip(*(c.to_pylist() for c in data.columns), strict=True):
                        copy.write_row(row)
        except psycopg.Error as exc:
            raise self._error(exc, exc.sqlstate) from None

    def copy_out(self, sql: str, rows: int) -> Iterator[bytes]:
        """The rows of a query as CSV text (`COPY (query) TO STDOUT (FORMAT csv)`), `rows`
        lines per chunk: memory stays bounded and no value becomes a Python object. The COPY
        holds the connection until the chunks are read to their end."""
        import psycopg

        self._streams += 1
        try:
            with (
                self._conn.cursor() as cursor,
                cursor.copy(f"COPY ({sql}\n) TO STDOUT (FORMAT csv)".encode()) as copy,
            ):
                lines: list[bytes] = []
                for line in copy:
                    lines.append(bytes(line))
                    if len(lines) >= rows:
                        yield b"".join(lines)
                        lines = []
                if lines:
                    yield b"".join(lines)
        except psycopg.Error as exc:
            raise self._error(exc, exc.sqlstate) from None
        finally:
            self._streams -= 1

    def begin(self, *, snapshot: bool = False) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if snapshot else "BEGIN")
        self._reading = snapshot

    def commit(self) -> None:
        self._reading = False
        self.execute("COMMIT")

    def rollback(self) -> None:
        self._reading = False
        self.execute("ROLLBACK")

    def idle(self) -> bool:
        from psycopg.pq import TransactionStatus

        status = self._conn.pgconn.transaction_status
        return self._streams == 0 and status in (
            TransactionStatus.INTRANS,
            TransactionStatus.INERROR,
        )

    def abort(self) -> None:
        """Cancel what runs and close the connection: the server rolls the transaction back
        by itself, and nothing here waits for it (longer than a cancel request takes)."""
        self.close()

    def _cancel(self, grace_over: bool = False) -> None:
        """Ask the server to stop the running statement; a no-op when none runs. After a
        delivery's grace period only a read is cancelled (planning), never a write of state:
        it records what a destination already took."""
        from psycopg.pq import TransactionStatus

        if grace_over and not self._reading:
            return
        with self._closing:  # never while another thread closes the connection
            conn = self._conn
            if not conn.closed and conn.pgconn.transaction_status == TransactionStatus.ACTIVE:
                conn.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)

    def close(self) -> None:
        """Close the connection; a statement still running is cancelled first, so the server
        does not go on with it for nobody."""
        self._cancel_registration.close()
        with self._closing:
            with contextlib.suppress(Exception):
                self._cancel()
            self._conn.close()


class DuckDBSession(WarehouseSession):
    dialect = "duckdb"

    def __init__(self, name: str, url: str, project_root: Path) -> None:
        from reverse_etl.warehouse.duckdb_native import parse_duckdb_url

        self.name = name
        try:
            target = parse_duckdb_url(url, project_root)
            self._conn = duckdb.connect(target.database, config=target.config)
        except (ValueError, duckdb.Error) as exc:
            raise WarehouseError(
                f"cannot open DuckDB warehouse '{name}' for the warehouse state backend "
                f"(it needs write access to its own schema): {database_message(exc)}",
                hint=f"check warehouses.{name}.url in retl.yml; no other process may hold the "
                "file open for writing",
            ) from None
        with contextlib.suppress(duckdb.Error):
            self._conn.execute("SET TimeZone = 'UTC'")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            result = self._conn.execute(sql, list(params) if params else None)
            return list(result.fetchall()) if result.description else []
        except duckdb.Error as exc:
            raise self._error(exc) from None

    def stream(self, sql: str, batch_rows: int) -> pa.RecordBatchReader:
        try:
            relation = self._conn.sql(sql)
            if relation is None:
                raise SessionError(f"a statement on warehouse '{self.name}' returned no rows")
            reader: pa.RecordBatchReader = relation.to_arrow_reader(batch_rows)
            return reader
        except duckdb.Error as exc:
            raise self._error(exc) from None

    def float_columns(self, sql: str) -> dict[str, bool]:
        try:
            relation = self._conn.sql(source_statement(sql))
        except duckdb.Error as exc:
            raise self._error(exc) from None
        if relation is None:
            raise SessionError(f"the source SQL on warehouse '{self.name}' is not a query")
        return {
            name: str(type_).upper() in _DUCKDB_FLOATS
            for name, type_ in zip(relation.columns, relation.types, strict=True)
        }

    def load(self, table: str, data: pa.Table) -> None:
        columns = ", ".join('"' + c.replace('"', '""') + '"' for c in data.column_names)
        try:
            self._conn.register("retl_load", data)
            self._conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM retl_load")
        except duckdb.Error as exc:
            raise self._error(exc) from None
        finally:
            with contextlib.suppress(duckdb.Error):
                self._conn.unregister("retl_load")

    def begin(self, *, snapshot: bool = False) -> None:
        self.execute("BEGIN TRANSACTION")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


def open_session(
    name: str, url: str, project_root: Path, query_timeout: float | None = None
) -> WarehouseSession:
    """A session on warehouse `name`; a warehouse of another kind is a WarehouseError."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "duckdb":
        return DuckDBSession(name, url, project_root)
    if scheme in ("postgres", "postgresql"):
        return PostgresSession(name, url, query_timeout)
    raise WarehouseError(
        f"state.backend 'warehouse' cannot run on warehouse '{name}' ({scheme}://) yet: this "
        "retl runs it on PostgreSQL and DuckDB",
        hint="use state.backend: local, or a PostgreSQL/DuckDB warehouse for state.warehouse",
    )
