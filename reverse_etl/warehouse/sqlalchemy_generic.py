"""Any warehouse SQLAlchemy can reach, read through a server-side cursor in bounded chunks.

`postgresql://` uses psycopg 3 and `mysql://`/`mariadb://` use PyMySQL unless the URL names a
driver. query_timeout is enforced on PostgreSQL (statement_timeout, per statement: the cursor
declaration and each fetch) and MySQL/MariaDB (max_execution_time/max_statement_time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reverse_etl.errors import WarehouseError
from reverse_etl.redact import mask_url, register_url
from reverse_etl.warehouse.base import (
    DEFAULT_BATCH_ROWS,
    Column,
    Warehouse,
    cancelled_error,
    check_batch_rows,
    closed_error,
    database_message,
    limit_zero,
    not_a_query_error,
    query_error,
    source_statement,
    timeout_error,
)
from reverse_etl.warehouse.postgres_copy import CopyReader, Deadline, copy_statement
from reverse_etl.warehouse.postgres_copy import plan as copy_plan
from reverse_etl.warehouse.rows_to_arrow import BatchBuilder, JsonText, describe

_DEFAULT_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
_CONNECT_TIMEOUT_SECONDS = 10
# MariaDB max_statement_time exceeded; MySQL max_execution_time exceeded.
_MYSQL_TIMEOUT_CODES = {1969, 3024}
_POSTGRES_QUERY_CANCELED = "57014"
# The source is the user's SQL as written: `%` and `:name` are not parameter markers.
_AS_WRITTEN = {"no_parameters": True}


def sqlalchemy_url(url: str) -> sa.URL:
    """The URL with retl's default driver for PostgreSQL and MySQL/MariaDB when none is named."""
    parsed = make_url(url)
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


class SQLAlchemyWarehouse(Warehouse):
    """A warehouse reached through a SQLAlchemy engine."""

    def __init__(self, name: str, url: str, query_timeout: float | None = None) -> None:
        self.name = name
        self.url = mask_url(url)
        self.query_timeout = query_timeout
        register_url(url)  # so that a driver message repeating the password is masked
        # Each open stream: its connection and result, closed with the warehouse.
        self._open: dict[sa.Connection, sa.CursorResult[Any]] = {}
        # Each open COPY stream (PostgreSQL): its connection and the COPY in progress.
        self._copying: dict[sa.Connection, contextlib.ExitStack] = {}
        try:
            parsed = sqlalchemy_url(url)
            self.dialect = parsed.get_backend_name()
            self._engine = sa.create_engine(parsed, connect_args=self._connect_args(parsed))
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise WarehouseError(
                f"warehouse '{name}' has an invalid URL {self.url}: {database_message(exc)}",
                hint="write a SQLAlchemy URL such as postgresql://user:${PASSWORD}@host/db",
            ) from None
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise WarehouseError(
                f"warehouse '{name}' uses {self.url.split('://', 1)[0]}://, for which no "
                f"SQLAlchemy dialect or driver is installed: {database_message(exc)}",
                hint="install the SQLAlchemy dialect package for that database next to retl",
            ) from None
        if self._engine.dialect.driver == "psycopg":
            sa.event.listen(self._engine, "connect", postgres_session)
        # Fail here, with a clear message, rather than halfway through a command.
        self._connect().close()

    @staticmethod
    def _connect_args(url: sa.URL) -> dict[str, Any]:
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            return {"connect_timeout": _CONNECT_TIMEOUT_SECONDS}
        return {}

    def columns(self, sql: str) -> list[Column]:
        connection = self._connect()
        try:
            self._apply_timeout(connection)
            result = self._execute(connection, limit_zero(sql), _AS_WRITTEN)
            if not result.returns_rows or result.cursor is None:
                raise not_a_query_error(self.name)
            hints = describe(self.dialect, result.cursor.description)
            result.close()
        finally:
            connection.close()
        return [Column(hint.name, hint.type_name) for hint in hints]

    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        check_batch_rows(batch_rows)
        if self._engine.dialect.driver == "psycopg":
            reader = self._copy_stream(sql, batch_rows)
            if reader is not None:
                return reader
        connection = self._connect()
        try:
            self._apply_timeout(connection)
            options = {**_AS_WRITTEN, "stream_results": True, "yield_per": batch_rows}
            result = self._execute(connection, source_statement(sql), options)
            self._open[connection] = result
            if not result.returns_rows or result.cursor is None:
                raise not_a_query_error(self.name)
            # Read the description first: a result read to its end closes its cursor.
            hints = describe(self.dialect, result.cursor.description)
            first_rows = self._fetch(result, batch_rows)
            builder = BatchBuilder(self.name, hints, first_rows)
            first_batch = builder.batch(first_rows)
            del first_rows
        except BaseException:
            self._discard(connection, finished=False)
            raise
        batches = self._batches(connection, result, builder, first_batch, batch_rows)
        return pa.RecordBatchReader.from_batches(builder.schema, batches)

    def _batches(
        self,
        connection: sa.Connection,
        result: sa.CursorResult[Any],
        builder: BatchBuilder,
        batch: pa.RecordBatch,
        batch_rows: int,
    ) -> Iterator[pa.RecordBatch]:
        finished = False
        try:
            if batch.num_rows:
                yield batch
            del batch
            while True:
                if connection not in self._open:
                    raise closed_error(self.name)
                rows = self._fetch(result, batch_rows)
                if not rows:
                    break
                yield builder.batch(rows)
            finished = True
        finally:
            self._discard(connection, finished=finished)

    def _copy_stream(self, sql: str, batch_rows: int) -> pa.RecordBatchReader | None:
        """PostgreSQL: the rows through COPY (query) TO STDOUT, parsed by pyarrow; None when a
        column's type needs the generic path."""
        connection = self._connect()
        stack = contextlib.ExitStack()
        try:
            self._apply_timeout(connection)
            result = self._execute(connection, limit_zero(sql), _AS_WRITTEN)
            if not result.returns_rows or result.cursor is None:
                raise not_a_query_error(self.name)
            description = result.cursor.description
            result.close()
            plans = copy_plan(description, describe(self.dialect, description))
            settings = self._execute(
                connection,
                "SELECT left(current_setting('DateStyle'), 3) = 'ISO', "
                "current_setting('bytea_output') = 'hex'",
                _AS_WRITTEN,
            ).one()
            if plans is None or not all(settings):
                connection.close()
                return None
            if self.query_timeout is not None:  # the COPY's time is bounded per batch below
                self._execute(connection, "SET LOCAL statement_timeout = 0", _AS_WRITTEN)
            raw: Any = connection.connection.driver_connection
            cursor = stack.enter_context(raw.cursor())
            deadline = Deadline(self.name, self.query_timeout, raw.cancel)
            try:
                with deadline.waiting():
                    copy = stack.enter_context(cursor.copy(copy_statement(source_statement(sql))))
            except Exception as exc:
                raise self._query_error(exc) from None
            self._copying[connection] = stack
            reader = CopyReader(self.name, plans, copy.read, batch_rows, deadline)
            first = self._next_copy_batch(reader)
            assert first is not None and reader.schema is not None
        except BaseException:
            self._discard_copy(connection, stack, finished=False)
            raise
        batches = self._copy_batches(connection, stack, reader, first)
        return pa.RecordBatchReader.from_batches(reader.schema, batches)

    def _next_copy_batch(self, reader: CopyReader) -> pa.RecordBatch | None:
        try:
            return reader.next_batch()
        except Exception as exc:
            raise self._query_error(exc) from None

    def _copy_batches(
        self,
        connection: sa.Connection,
        stack: contextlib.ExitStack,
        reader: CopyReader,
        batch: pa.RecordBatch | None,
    ) -> Iterator[pa.RecordBatch]:
        finished = False
        try:
            while batch is not None:
                if batch.num_rows:
                    yield batch
                del batch
                if connection not in self._copying:
                    raise closed_error(self.name)
                batch = self._next_copy_batch(reader)
            finished = True
        finally:
            self._discard_copy(connection, stack, finished=finished)

    def _discard_copy(
        self, connection: sa.Connection, stack: contextlib.ExitStack, *, finished: bool
    ) -> None:
        """End a COPY stream; one left mid-result is cancelled and its connection dropped."""
        self._copying.pop(connection, None)
        with contextlib.suppress(Exception):
            if not finished:
                raw: Any = connection.connection.driver_connection
                raw.cancel()
            stack.close()
        with contextlib.suppress(Exception):
            if not finished:
                connection.invalidate()
            connection.close()

    def _connect(self) -> sa.Connection:
        try:
            return self._engine.connect()
        except Exception as exc:
            raise WarehouseError(
                f"could not connect to warehouse '{self.name}' at {self.url}: "
                f"{database_message(_driver_error(exc))}",
                hint=f"check warehouses.{self.name}.url in retl.yml, the environment variables "
                "it uses, and that the server is reachable from here",
            ) from None

    def _apply_timeout(self, connection: sa.Connection) -> None:
        seconds = self.query_timeout
        if seconds is None:
            return
        milliseconds = max(1, round(seconds * 1000))
        if self.dialect == "postgresql":
            statement = f"SET LOCAL statement_timeout = {milliseconds}"
        elif self.dialect == "mariadb" or getattr(connection.dialect, "is_mariadb", False):
            statement = f"SET SESSION max_statement_time = {max(seconds, 0.001):g}"
        elif self.dialect == "mysql":
            statement = f"SET SESSION max_execution_time = {milliseconds}"
        else:
            return
        self._execute(connection, statement, _AS_WRITTEN)

    def _execute(
        self, connection: sa.Connection, sql: str, options: dict[str, Any]
    ) -> sa.CursorResult[Any]:
        try:
            return connection.exec_driver_sql(sql, execution_options=options)
        except Exception as exc:
            raise self._query_error(exc) from None

    def _fetch(self, result: sa.CursorResult[Any], size: int) -> Sequence[Any]:
        try:
            return result.fetchmany(size)
        except Exception as exc:
            raise self._query_error(exc) from None

    def _query_error(self, exc: Exception) -> WarehouseError:
        if isinstance(exc, WarehouseError):
            return exc
        error = _driver_error(exc)
        if self.query_timeout is not None and _is_timeout(error):
            return timeout_error(self.name, self.query_timeout)
        if _sqlstate(error) == _POSTGRES_QUERY_CANCELED:
            return cancelled_error(self.name, database_message(error))
        return query_error(self.name, database_message(error))

    def _discard(self, connection: sa.Connection, *, finished: bool) -> None:
        """Give a connection back; one left mid-result is dropped, not drained into the pool."""
        result = self._open.pop(connection, None)
        with contextlib.suppress(Exception):  # a broken connection is thrown away all the same
            if not finished:
                if result is not None and self.dialect in ("mysql", "mariadb"):
                    self._stop_mysql_query(connection, result)
                connection.invalidate()
            connection.close()

    def _stop_mysql_query(self, connection: sa.Connection, result: sa.CursorResult[Any]) -> None:
        """Stop a MySQL query whose rows nobody will read.

        MySQL sends every row of an unbuffered result and a client must read them all; killing
        the query makes the server end it with an error right away.
        """
        killed = False
        thread_id = getattr(connection.connection.driver_connection, "thread_id", None)
        if callable(thread_id):
            with contextlib.suppress(Exception), self._engine.connect() as other:
                other.exec_driver_sql(
                    f"KILL QUERY {int(thread_id())}", execution_options=_AS_WRITTEN
                )
                killed = True
        if killed and result.cursor is not None:
            # Read on to the server's "query interrupted" error, on the DB-API cursor itself:
            # SQLAlchemy would log that expected error.
            with contextlib.suppress(Exception):
                result.cursor.close()
        else:
            # PyMySQL: forget the unread result, or its finalizer reads from the closed socket.
            unread = getattr(result.cursor, "_result", None)
            if unread is not None and hasattr(unread, "unbuffered_active"):
                unread.unbuffered_active = False

    def close(self) -> None:
        for connection in list(self._open):
            self._discard(connection, finished=False)
        for connection, stack in list(self._copying.items()):
            self._discard_copy(connection, stack, finished=False)
        self._engine.dispose()


def _driver_error(exc: BaseException) -> BaseException:
    """The DB-API error SQLAlchemy wraps, whose message is the database's own."""
    original = getattr(exc, "orig", None)
    return original if isinstance(original, BaseException) else exc


def _sqlstate(error: BaseException) -> str | None:
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return state if isinstance(state, str) else None


def _is_timeout(error: BaseException) -> bool:
    if _sqlstate(error) == _POSTGRES_QUERY_CANCELED:
        return "statement timeout" in str(error)
    args: tuple[Any, ...] = error.args
    return len(args) > 0 and args[0] in _MYSQL_TIMEOUT_CODES


def postgres_session(dbapi_connection: Any, _record: Any) -> None:
    """Values keep their meaning: intervals arrive as ISO 8601 text (`P-1M`: a month stays a
    month, where a timedelta would make it 30 days) and JSON as its text (a JSON `null` stays
    JSON, not SQL NULL)."""
    from psycopg.types.string import TextLoader

    class JsonTextLoader(TextLoader):
        def load(self, data: Any) -> JsonText:
            return JsonText(super().load(data))

    dbapi_connection.adapters.register_loader("interval", TextLoader)
    for type_name in ("json", "jsonb"):
        dbapi_connection.adapters.register_loader(type_name, JsonTextLoader)
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET intervalstyle = 'iso_8601'")
    dbapi_connection.commit()
