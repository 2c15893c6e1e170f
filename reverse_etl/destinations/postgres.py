"""PostgreSQL destination, the fast path: COPY a batch into a temporary table, then one statement.

Each batch is written with pyarrow's CSV writer (COPY) into a temporary table with a row ordinal
and one column per field, `text` unless the Arrow type has a PostgreSQL twin that converts to the
target like its text would (numbers, booleans, dates, timestamps), then applied with ONE
set-based statement per action that casts every column to the target column's type. When that statement fails on some records, it is re-run on halves of the
ordinal range inside savepoints (no second COPY); once a failing range is small, a temporary
PL/pgSQL function tries its records one by one on the server. The other records land and each
failing one is reported with the database's message. One transaction (commit) per batch.

Exactly once (SPEC §6.4): every path (straight COPY, stage + statement, savepoint bisection)
inserts the batch's delivery marker into `retl_deliveries` (in the target table's schema,
created on first use; ledger.py) in the batch's own transaction, so the marker exists exactly
when the batch committed. When the answer to a COMMIT is lost, the batch is in doubt until the
ledger is read: the next attempt (or `resolve`) finds its marker (applied) or not (send again).
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from reverse_etl import interrupt
from reverse_etl.destinations import fit, ledger
from reverse_etl.destinations.base import Batch, BatchResult, Capabilities, lazy_module, register
from reverse_etl.destinations.tables import (
    Column,
    Table,
    TableDestination,
    TableOptions,
    not_found,
)
from reverse_etl.destinations.values import portable
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

if TYPE_CHECKING:
    import psycopg
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import tenacity
    from psycopg import conninfo, pq, sql

    Connection = psycopg.Connection[tuple[Any, ...]]
    Cursor = psycopg.Cursor[tuple[Any, ...]]
else:
    # Imported on first use: validating a project that names this connector (every command
    # does) must not load psycopg.
    conninfo = lazy_module("psycopg.conninfo")
    pc = lazy_module("pyarrow.compute")
    pa_csv = lazy_module("pyarrow.csv")
    pq = lazy_module("psycopg.pq")
    psycopg = lazy_module("psycopg")
    sql = lazy_module("psycopg.sql")
    tenacity = lazy_module("tenacity")

_STAGE = "_retl_stage"
_ORD = "_retl_ord"
# A stage of at least this many rows is analyzed before the merge: temporary tables are never
# analyzed by autovacuum, and a planner that guesses their size may join them by nested loop.
ANALYZE_STAGE_ROWS = 10_000
_QUERY_CANCELED = "57014"  # a statement cancelled (by retl stopping, or on the server)
# SQLSTATE classes that blame the data of a record, not the statement: cardinality (21), data
# exception (22), integrity constraint (23), triggered data change (27), external routine (38, 39),
# with check option (44), PL/pgSQL raise (P0). Anything else is the destination's problem.
_RECORD_ERROR_CLASSES = frozenset({"21", "22", "23", "27", "38", "39", "44", "P0"})
# Explicit casts to these types truncate silently; text is assigned to them with a length check.
_LENGTH_TYPES = re.compile(r"^(character varying|character|bit varying|bit)\(")


class PostgresOptions(TableOptions):
    connect_timeout: int = 10


@dataclass(frozen=True)
class _Column(Column):
    """A PostgreSQL column; `type` is format_type(), valid SQL for a cast."""

    has_default: bool
    category: str  # pg_type.typcategory ('A' array, 'S' string ...)
    base: str = ""  # pg_type.typname of the (domain's base) type: int4, timestamptz ...

    def cast(self, expr: sql.Composable) -> sql.Composable:
        """`expr` (text) converted to this column's type the way an INSERT would assign it."""
        if _LENGTH_TYPES.match(self.type):
            return expr
        return sql.SQL("{}::{}").format(expr, sql.SQL(self.type))


@dataclass(frozen=True)
class _Table(Table[_Column]):
    schema: str
    kind: str = "r"  # pg_class.relkind: r table, p partitioned, v view, f foreign

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def normalise_url(url: str) -> str:
    """A libpq connection string from a postgres URL, also accepting SQLAlchemy's `+driver`."""
    return re.sub(r"^(postgresql|postgres)\+\w+://", "postgresql://", url.strip())


_IDENT = r'"(?:[^"]|"")*"|[^."]+'


def split_object(object: str) -> tuple[str, str]:
    """`table`, `schema.table` or `"odd.schema"."Table"` -> (schema, table); default `public`.

    Names are matched exactly as written (no case folding); quotes are only needed for dots.
    """
    match = re.fullmatch(rf"\s*({_IDENT})(?:\.({_IDENT}))?\s*", object)
    if match is None and '"' in object:
        raise DestinationError(
            f"'{object}' is not a PostgreSQL table name: a name holding '\"' must be quoted",
            hint='write the name in double quotes and double the quote inside: public."my""table"',
        )
    if match is None:
        raise DestinationError(
            f"'{object}' is not a PostgreSQL table name",
            hint='write table, schema.table, or quote names with dots: "my.schema"."table"',
        )
    parts = [_unquote(p) for p in match.groups() if p is not None]
    return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


def is_record_error(exc: BaseException) -> bool:
    """True when PostgreSQL blames the values of a record (a rejection), not the statement."""
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in _RECORD_ERROR_CLASSES


def _cancel(conn: Connection, closing: threading.Lock, grace_over: bool) -> None:
    """Ask the server to stop the statement running on `conn` (also when a delivery's grace
    period is over: the batch's transaction then does not commit); a no-op when none runs."""
    with closing:  # never while `close` closes the connection
        if not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            conn.cancel_safe(timeout=2.0)


def _is_transient(exc: BaseException) -> bool:
    """Connection lost, server restarting, deadlock or serialization failure: retry the batch."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in {"08", "40"} or state in {"57P01", "57P02", "57P03"}


def db_message(exc: BaseException) -> str:
    """The server's primary message and detail on one line."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).strip() or type(exc).__name__
    detail = getattr(diag, "message_detail", None)
    return _one_line(f"{primary}: {detail}" if detail else primary)


def _one_line(text: str) -> str:
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= 1000 else text[:997] + "..."


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _pg_type(dtype: pa.DataType) -> str:
    """A PostgreSQL column type for an Arrow type (for create_tables)."""
    t = pa.types
    if t.is_dictionary(dtype):
        return _pg_type(dtype.value_type)
    if t.is_boolean(dtype):
        return "boolean"
    if t.is_int8(dtype) or t.is_int16(dtype) or t.is_uint8(dtype):
        return "smallint"
    if t.is_int32(dtype) or t.is_uint16(dtype):
        return "integer"
    if t.is_int64(dtype) or t.is_uint32(dtype):
        return "bigint"
    if t.is_uint64(dtype):
        return "numeric(20,0)"
    if t.is_float16(dtype) or t.is_float32(dtype):
        return "real"
    if t.is_float64(dtype):
        return "double precision"
    if t.is_decimal(dtype):
        return f"numeric({min(dtype.precision, 1000)},{dtype.scale})"
    if t.is_date(dtype):
        return "date"
    if t.is_time(dtype):
        return "time"
    if t.is_timestamp(dtype):
        return "timestamp with time zone" if dtype.tz else "timestamp without time zone"
    if t.is_duration(dtype):
        return "interval"
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_fixed_size_binary(dtype):
        return "bytea"
    if t.is_nested(dtype):
        return "jsonb"
    return "text"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _array_literal(value: Any) -> str | None:
    """A PostgreSQL array literal ('{a,"b c",NULL}') for a Python list (for array columns)."""
    if value is None:
        return None
    items = []
    for item in value:
        if item is None:
            items.append("NULL")
        elif isinstance(item, list):
            items.append(_array_literal(item) or "NULL")
        else:
            text = json.dumps(item) if isinstance(item, dict) else str(item)
            items.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def _as_csv_text(column: pa.ChunkedArray, target: _Column) -> pa.ChunkedArray:
    """A column pyarrow's CSV writer renders as PostgreSQL input text (most types pass as is)."""
    dtype = column.type
    t = pa.types
    if t.is_dictionary(dtype):
        return _as_csv_text(column.cast(dtype.value_type), target)
    if t.is_string_view(dtype) or t.is_null(dtype):
        return column.cast(pa.large_string())
    if t.is_float16(dtype):
        return column.cast(pa.float32())
    if t.is_timestamp(dtype) and dtype.tz and dtype.tz not in ("UTC", "Z", "+00:00"):
        # Written in UTC ("...Z"), so a column without time zone gets the UTC wall time too.
        return column.cast(pa.timestamp(dtype.unit, "UTC"))
    if t.is_duration(dtype):
        unit = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "microseconds"}
        if dtype.unit == "ns":
            column = pc.divide(column.cast(pa.int64()), 1000)
        text = pc.cast(column.cast(pa.int64()), pa.large_string())
        return pc.binary_join_element_wise(text, " " + unit[dtype.unit], "")
    if dtype == pa.month_day_nano_interval():
        # ISO 8601 ("P-1M"): months stay months, which PostgreSQL's interval input reads.
        return portable(pa.table([column], names=["v"])).column(0)
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_fixed_size_binary(dtype):
        values = [None if v is None else "\\x" + v.hex() for v in column.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.large_string())])
    if t.is_nested(dtype):
        if target.category == "A" and (t.is_list(dtype) or t.is_large_list(dtype)):
            values = [_array_literal(v) for v in column.to_pylist()]
        else:
            values = [
                None if v is None else json.dumps(v, default=_json_default)
                for v in column.to_pylist()
            ]
        return pa.chunked_array([pa.array(values, pa.large_string())])
    return column


_NUMBERS = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"})
_TIMESTAMPS = frozenset({"timestamp", "timestamptz"})


def _stage_type(dtype: pa.DataType, target: _Column) -> str:
    """The stage column's type: the Arrow type's own PostgreSQL type when pyarrow's rendering of
    it always loads (COPY parses it once; the statement's cast is then cheap or a no-op) and it
    converts to the target the way the text would; otherwise text, cast by the statement."""
    t = pa.types
    if t.is_dictionary(dtype):
        dtype = dtype.value_type
    base = target.base
    if t.is_integer(dtype) and base in _NUMBERS and not t.is_uint64(dtype):
        return "bigint"
    if t.is_floating(dtype) and not t.is_float16(dtype) and base in ("float4", "float8", "numeric"):
        return "double precision"
    if t.is_decimal(dtype) and base in _NUMBERS:  # fractions into integers: refused (fit.py)
        return "numeric"
    if t.is_boolean(dtype) and base == "bool":
        return "boolean"
    if t.is_timestamp(dtype) and base in _TIMESTAMPS:
        return "timestamp with time zone" if dtype.tz else "timestamp without time zone"
    if t.is_date(dtype) and (base == "date" or base in _TIMESTAMPS):
        return "date"
    return "text"


def _ordinals(n: int) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(array.array("q", range(n)))])


@register("postgres")
class PostgresDestination(TableDestination[_Table]):
    """Tables of one PostgreSQL database; objects are `table` or `schema.table`."""

    options_model = PostgresOptions
    capabilities = Capabilities(
        guarantee="exactly-once",
        resolves=True,  # through the delivery ledger: a batch in doubt committed or not
        default_batch_size=50_000,
        max_batch_size=200_000,
        concurrent_batches=2,
    )
    options: PostgresOptions

    connect_attempts: ClassVar[int] = 3
    batch_attempts: ClassVar[int] = 3
    retry_wait_seconds: ClassVar[float] = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn: Connection | None = None
        self._conninfo = normalise_url(self.options.url)
        self._ledger = ledger.PostgresLedger()
        # Set when a batch's COMMIT has been sent: a connection lost from then on leaves the
        # batch in doubt (it may have committed), not rolled back.
        self._committing = False
        # Stopping retl cancels the statement running on the connection (see interrupt): the
        # batch's transaction does not commit, and nothing waits for it.
        self._cancel_registration = contextlib.ExitStack()
        self._closing = threading.Lock()

    @classmethod
    def object_problem(cls, object: str) -> tuple[str, str | None] | None:
        try:
            names = split_object(object)
        except DestinationError as exc:
            return exc.message, exc.hint
        too_long = fit.name_problems(names, "postgresql", "table")
        return (too_long[0], "rename the table") if too_long else None

    # -- connection -------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        """host:port/db of the URL, for messages (never the password)."""
        try:
            info = conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.Error:
            return "the configured url"
        host = info.get("host") or "localhost"
        port = info.get("port") or "5432"
        return f"{host}:{port}/{info.get('dbname') or ''}"

    def open(self) -> None:
        self._connection()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._tables.clear()
        self._cancel_registration.close()
        if conn is not None and not conn.closed:
            with self._closing:
                conn.close()

    def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._conn = None
        self._tables.clear()
        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(self.connect_attempts),
                wait=tenacity.wait_exponential(multiplier=self.retry_wait_seconds, max=10),
                retry=tenacity.retry_if_exception(
                    lambda e: isinstance(e, psycopg.OperationalError)
                ),
                reraise=True,
            ):
                with attempt:
                    self._conn = psycopg.connect(
                        self._conninfo,
                        autocommit=True,
                        connect_timeout=self.options.connect_timeout,
                        application_name=f"retl:{self.name}"[:63],
                    )
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot connect to PostgreSQL destination '{self.name}' at {self._where}: "
                f"{_first_line(exc)}",
                hint="check the destination url and that the server is running and reachable",
            ) from exc
        assert self._conn is not None
        self._cancel_registration.close()
        self._cancel_registration.enter_context(
            interrupt.cancelling(functools.partial(_cancel, self._conn, self._closing))
        )
        # Staged batches of ~100k rows stay in memory instead of spilling temp-table pages;
        # timestamps without a zone are UTC, whatever the server's default time zone.
        self._conn.execute("SET temp_buffers = '128MB'")
        self._conn.execute("SET TimeZone = 'UTC'")
        return self._conn

    def _retrying(self) -> tenacity.Retrying:
        """Attempts of one unit of work, retried when the connection was lost or a transient
        server error (deadlock, serialization failure) occurred."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.batch_attempts),
            wait=tenacity.wait_exponential(multiplier=self.retry_wait_seconds, max=10),
            retry=tenacity.retry_if_exception(_is_transient),
            reraise=True,
        )

    def _query(self, query: sql.Composed | sql.SQL | str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a catalog query, retrying when the connection was lost."""
        try:
            for attempt in self._retrying():
                with attempt:
                    return self._connection().execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise DestinationError(
                f"PostgreSQL destination '{self.name}' failed: {db_message(exc)}"
            ) from exc
        raise AssertionError("unreachable")

    # -- catalog ----------------------------------------------------------------------------

    def count(self, object: str) -> int | None:
        if self._find_table(object) is None:
            return None
        schema, name = split_object(object)
        rows = self._query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
        return int(rows[0][0])

    def objects(self) -> list[str]:
        rows = self._query(
            """
            SELECT n.nspname, c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v', 'f') AND NOT c.relispartition
              AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
            ORDER BY 1, 2
            """
        )
        # retl's own delivery ledger is no object to sync to
        own = (ledger.LEDGER_TABLE, ledger.CLAIMS_TABLE)
        return [f"{schema}.{name}" for schema, name in rows if name not in own]

    def _find_table(self, object: str) -> _Table | None:
        if object in self._tables:
            return self._tables[object]
        schema, name = split_object(object)
        rows = self._query(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                   EXISTS (
                       SELECT 1 FROM pg_index i
                       WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1
                         AND i.indkey[0] = a.attnum AND i.indpred IS NULL
                         AND i.indexprs IS NULL
                   ),
                   a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                   t.typcategory,
                   coalesce(b.typname, t.typname),
                   a.attgenerated <> '' OR a.attidentity = 'a',
                   c.relkind
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_type b ON b.oid = t.typbasetype AND t.typtype = 'd'
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'f')
            ORDER BY a.attnum
            """,
            (schema, name),
        )
        if not rows:
            return None
        columns = {
            r[0]: _Column(
                name=r[0],
                type=r[1],
                nullable=r[2],
                unique=r[3],
                has_default=r[4],
                category=r[5],
                base=r[6],
                required=not r[2] and not r[4],
                writable=not r[7],
            )
            for r in rows
        }
        table = _Table(schema=schema, name=name, columns=columns, kind=rows[0][8])
        self._tables[object] = table
        return table

    def _qualified_name(self, object: str) -> str:
        schema, name = split_object(object)
        return f"{schema}.{name}"

    # -- validation and setup ---------------------------------------------------------------

    def _upsert_check_hint(self, table: _Table, key: str) -> str:
        return f"add one, e.g. ALTER TABLE {table.display} ADD UNIQUE ({key})"

    def _more_problems(
        self, table: _Table, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        problems: list[str] = []
        if action in ("insert", "upsert"):
            mapped = set(fields) | {key_field}
            for column in table.columns.values():
                if not column.nullable and not column.has_default and column.name not in mapped:
                    problems.append(
                        f"column '{column.name}' of {table.display} is NOT NULL without a "
                        "default, so it must be mapped"
                    )
        return problems

    # Values the table would alter, keys its collation would merge (fit.py).

    def _fit_dialect(self) -> str | None:
        return "postgresql"

    def _object_names(self, object: str) -> list[str]:
        return list(split_object(object))

    def _key_collation(self, table: _Table, key: str) -> fit.KeyCollation:
        column = table.columns[key]
        if column.base in ("citext", "bpchar"):  # character(n) compares without trailing spaces
            ci, pads = column.base == "citext", column.base == "bpchar"
            return fit.KeyCollation(column.type, ignores_case=ci, pads=pads)
        rows = self._query(
            "SELECT co.collname, co.collisdeterministic FROM pg_attribute a "
            "JOIN pg_collation co ON co.oid = a.attcollation "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s",
            (table.schema, table.name, key),
        )
        return fit.postgres_collation(rows[0][0], rows[0][1]) if rows else fit.EXACT

    def _stored_keys(self, table: _Table, key: str, values: list[str]) -> list[str]:
        query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::text[])").format(
            sql.Identifier(key), table.ident, sql.Identifier(key)
        )
        return [str(r[0]) for r in self._query(query, (values,))]

    def _create_table(self, object: str, schema: pa.Schema, key_field: str | None) -> None:
        schema_name, name = split_object(object)
        columns = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(f.name),
                sql.SQL(_pg_type(f.type)),
                sql.SQL(" PRIMARY KEY" if f.name == key_field else ""),
            )
            for f in schema
        ]
        conn = self._connection()
        try:
            with conn.transaction():
                # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database.
                if not self._query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name,)):
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
                conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                        sql.Identifier(schema_name, name), sql.SQL(", ").join(columns)
                    )
                )
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot create table {schema_name}.{name}: {db_message(exc)}"
            ) from exc
        self._tables.pop(object, None)

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> BatchResult:
        if batch.size == 0:
            return BatchResult()
        table = self._table(batch.object)  # fit.py: refuse what the table would alter
        unfit = self._unfit(batch, table, self._batch_columns(batch, table))
        if unfit:
            return fit.deliver_without(batch, unfit, self.deliver)
        doubt: str | None = None  # why the last attempt may have committed
        try:
            for attempt in self._retrying():
                with attempt:
                    if doubt is not None:
                        if batch.marker is None:
                            if batch.action == "insert":  # sent again, it could be repeated
                                return BatchResult(in_doubt=dict.fromkeys(range(batch.size), doubt))
                        else:
                            entries = self._markers_of(batch)
                            if entries:
                                return ledger.resolved(batch.marker, entries)
                        doubt = None  # not committed: the batch is sent again
                    try:
                        return self._deliver_attempt(batch)
                    except psycopg.Error as exc:
                        if self._committing and _is_transient(exc):
                            doubt = (
                                "the connection was lost while the batch was committing: "
                                f"{_first_line(exc)}"
                            )
                        raise
        except DestinationError:
            if doubt is not None:  # cannot reconnect to check: the batch stays in doubt
                return BatchResult(in_doubt=dict.fromkeys(range(batch.size), doubt))
            raise
        except psycopg.Error as exc:
            if _is_transient(exc) and doubt is not None:
                return BatchResult(in_doubt=dict.fromkeys(range(batch.size), doubt))
            if _is_transient(exc):
                raise DestinationError(
                    f"lost the connection to PostgreSQL destination '{self.name}' at "
                    f"{self._where}: {_first_line(exc)}",
                    hint="the batch was rolled back and will be sent again on the next run",
                ) from exc
            message = db_message(exc)
            hint = None
            if ledger.LEDGER_TABLE in message and "permission denied" in message:
                hint = (
                    f"GRANT SELECT, INSERT, DELETE ON {ledger.LEDGER_TABLE} (in the schema of "
                    f"{batch.object}) to the destination's user: retl commits a delivery marker "
                    "there with each batch, which makes a run killed at any moment safe to repeat"
                )
            raise DestinationError(
                f"PostgreSQL destination '{self.name}' failed on {batch.object}: {message}", hint
            ) from exc
        raise AssertionError("unreachable")

    def _deliver_attempt(self, batch: Batch) -> BatchResult:
        """One attempt at the batch, in one transaction with its marker (if any)."""
        self._committing = False
        if batch.marker is not None:
            self._ledger.ensure(self._connection(), self._table(batch.object).schema, self.name)
        if self._copies_straight(batch):
            try:
                return self._copy_straight(batch)
            except _StageRefused:
                pass  # a record the table refuses: the stage path isolates it
        try:
            return self._deliver_once(batch, typed_stage=True)
        except _StageRefused:
            # A value pyarrow rendered that its own type refuses (a year out of range...):
            # stage everything as text so the record can be isolated.
            return self._deliver_once(batch, typed_stage=False)

    def _commit_with_marker(self, cur: Cursor, batch: Batch, result: BatchResult) -> None:
        """The last statement of a batch's transaction: its marker, for the records applied."""
        if batch.marker is not None:
            schema = self._table(batch.object).schema
            self._ledger.write(cur, schema, batch.marker, result.accepted)
        self._committing = True  # the transaction's block ends here: COMMIT is sent next

    def _markers_of(self, batch: Batch) -> list[ledger.LedgerEntry]:
        """The ledger rows of the batch's marker (psycopg errors pass through)."""
        assert batch.marker is not None
        schema = self._table(batch.object).schema
        return self._ledger.find(self._connection(), schema, batch.marker)

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt: their batch committed exactly when its marker is in the ledger.
        Records an earlier run left in doubt carry no marker: that run's markers were already
        read back into state before this run planned, so these were not committed."""
        if batch.marker is None:
            if batch.run_id is None:
                return super().resolve(batch)
            why = "not applied: no delivery marker of its batch was found in the destination"
            return BatchResult(retry=dict.fromkeys(range(batch.size), why))
        try:
            return ledger.resolved(batch.marker, self._markers_of(batch))
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot read the delivery ledger of PostgreSQL destination '{self.name}': "
                f"{db_message(exc)}"
            ) from exc

    def recover_markers(self, sync: str, target: str) -> list[ledger.LedgerEntry]:
        try:
            for attempt in self._retrying():
                with attempt:
                    return self._ledger.read(self._connection(), sync, target)
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot read the delivery ledger of PostgreSQL destination '{self.name}': "
                f"{db_message(exc)}"
            ) from exc
        raise AssertionError("unreachable")

    def forget_markers(self, sync: str, target: str, claim: ledger.Claim | None = None) -> None:
        try:
            for attempt in self._retrying():
                with attempt:
                    self._ledger.forget(self._connection(), sync, target, claim)
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot clean the delivery ledger of PostgreSQL destination '{self.name}': "
                f"{db_message(exc)}"
            ) from exc

    def claim(
        self, sync: str, target: str, object: str, label: str, holder: ledger.ClaimHolder
    ) -> ledger.Claim | None:
        """The claims table sits in the schema of `object`; a schema that does not exist yet
        holds no table, no ledger and no claim (this run creates them as it goes)."""
        schema, _ = split_object(object)
        try:
            for attempt in self._retrying():
                with attempt:
                    conn = self._connection()
                    exists = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
                    ).fetchone()
                    if exists is None:
                        return None
                    return self._ledger.claim(conn, schema, sync, target, label, holder, self.name)
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot claim {label} in PostgreSQL destination '{self.name}' "
                f"({schema}.{ledger.CLAIMS_TABLE}): {db_message(exc)}",
                hint=f"GRANT SELECT, INSERT, UPDATE ON {schema}.{ledger.CLAIMS_TABLE} to the "
                "destination's user: a run claims its table there, so that two overlapping "
                "runs of a sync never both deliver",
            ) from exc
        raise AssertionError("unreachable")

    def _copies_straight(self, batch: Batch) -> bool:
        """A first load (empty state) of insert or upsert records into a plain table that was
        empty when the run began, with every value loading as the stage would convert it:
        the batch is COPY'd into the table itself, with no stage and no merge. Upsert keys are
        unique, so a record that is already there aborts the COPY and the batch takes the
        stage path, which never duplicates a record."""
        if not batch.first_load:
            return False
        table = self._table(batch.object)
        if table.kind not in ("r", "p"):  # views, foreign tables: COPY may not reach them
            return False
        for name in batch.records.column_names:
            column = table.columns.get(name)
            if column is None or not _copies_like_the_stage(
                batch.records.column(name).type, column
            ):
                return False
        query = sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(table.ident)
        return self._loads_straight(batch, lambda: bool(self._query(query)[0][0]))

    def _copy_straight(self, batch: Batch) -> BatchResult:
        """COPY the batch into its table in one transaction; _StageRefused when the table
        refuses a record (the transaction is rolled back, nothing landed)."""
        table = self._table(batch.object)
        names = self._batch_columns(batch, table)
        stage, unstageable = _stage_records(batch.records, [table.columns[n] for n in names])
        conn = self._connection()
        self._committing = False
        result = BatchResult.committed(batch.size, unstageable)
        try:
            with conn.transaction(), conn.cursor() as cur:
                _copy(cur, stage.drop_columns([_ORD]), table.ident, names)
                self._commit_with_marker(cur, batch, result)
        except psycopg.Error as exc:
            if conn.broken:
                self._conn = None
            if _is_transient(exc) or exc.sqlstate == _QUERY_CANCELED:
                raise
            if not is_record_error(exc):
                # Not allowed here (row-level security, rules...): this run takes the stage path.
                self._stop_loading_straight(batch)
            raise _StageRefused from exc
        return result

    def _deliver_once(self, batch: Batch, typed_stage: bool) -> BatchResult:
        table = self._table(batch.object)
        names = self._batch_columns(batch, table)
        columns = [table.columns[n] for n in names]
        types = [
            _stage_type(batch.records.column(c.name).type, c) if typed_stage else "text"
            for c in columns
        ]
        stage, unstageable = _stage_records(batch.records, columns)
        conn = self._connection()
        self._committing = False
        run = _StatementRun(conn, batch, table, columns)
        run.rejected.update(unstageable)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    sql.SQL("CREATE TEMPORARY TABLE {} ({} bigint, {}) ON COMMIT DROP").format(
                        sql.Identifier(_STAGE),
                        sql.Identifier(_ORD),
                        sql.SQL(", ").join(
                            sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(type_))
                            for i, type_ in enumerate(types)
                        ),
                    )
                )
                try:
                    _copy(cur, stage, sql.Identifier(_STAGE), stage.column_names)
                except psycopg.Error as exc:
                    if is_record_error(exc) and any(t != "text" for t in types):
                        raise _StageRefused from exc
                    raise
                if stage.num_rows >= ANALYZE_STAGE_ROWS:
                    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(_STAGE)))
                if stage.num_rows:
                    run.apply(cur, 0, batch.size - 1)
                missing = [
                    o for o in range(batch.size) if o not in run.found and o not in run.rejected
                ]
                if batch.action == "update":
                    run.rejected.update(not_found(batch, table, missing))
                absent = len(missing) if batch.action == "delete" else 0
                result = BatchResult.committed(batch.size, run.rejected, absent=absent)
                self._commit_with_marker(cur, batch, result)
        except BaseException:
            if conn.broken:
                self._conn = None
            raise
        return result


class _StageRefused(Exception):
    """COPY refused a value in a typed stage column: the batch is staged again as text."""


def _stage_records(records: pa.Table, columns: list[_Column]) -> tuple[pa.Table, dict[int, str]]:
    """The batch as the CSV-ready stage table (ordinal first), minus rows PostgreSQL cannot
    even stage (text with NUL characters), which are rejected up front."""
    arrays: list[pa.ChunkedArray | pa.Array] = [_ordinals(records.num_rows)]
    arrays += [_as_csv_text(records.column(c.name), c) for c in columns]
    stage = pa.table(arrays, names=[_ORD, *[f"c{i}" for i in range(len(columns))]])
    bad: pa.ChunkedArray | None = None
    for column in stage.columns[1:]:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            has_nul = pc.fill_null(pc.match_substring(column, "\x00"), False)
            if pc.any(has_nul).as_py():
                bad = has_nul if bad is None else pc.or_(bad, has_nul)
    rejected: dict[int, str] = {}
    if bad is not None:
        for ord in pc.indices_nonzero(bad).to_pylist():
            rejected[ord] = "text contains a NUL character (0x00), which PostgreSQL cannot store"
        stage = stage.filter(pc.invert(bad))
    return stage, rejected


def _copies_like_the_stage(dtype: pa.DataType, target: _Column) -> bool:
    """Whether COPY of the value's text into the target column stores what the stage path's
    cast would: not so for fractions into integers (the cast rounds, COPY refuses) and floats
    into numeric (the cast keeps 15 digits, the text has up to 17)."""
    t = pa.types
    if t.is_dictionary(dtype):
        dtype = dtype.value_type
    if t.is_floating(dtype) or t.is_decimal(dtype):
        if target.base in ("int2", "int4", "int8"):
            return False
        return not (t.is_floating(dtype) and target.base == "numeric")
    return True


def _copy(cur: Cursor, records: pa.Table, table: sql.Identifier, columns: Sequence[str]) -> None:
    """COPY the records (CSV-ready columns, in the order of `columns`) into `table`."""
    if not records.num_rows:
        return
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(records, sink, pa_csv.WriteOptions(include_header=False))
    data = memoryview(sink.getvalue())
    names = sql.SQL(", ").join(sql.Identifier(n) for n in columns)
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, names)) as copy:
        step = 8 << 20
        for start in range(0, len(data), step):
            copy.write(data[start : start + step])


def _statement(
    batch: Batch, table: _Table, columns: list[_Column], in_plpgsql: bool = False
) -> sql.Composed:
    """The one set-based statement for the batch, over the stage rows with ordinals %s..%s; or,
    `in_plpgsql`, for the one record `_retl_i` as a static PL/pgSQL statement (no result)."""
    target = table.ident
    stage = sql.Identifier(_STAGE)
    t = sql.Identifier("_retl_target")
    ordinal = sql.Identifier(_ORD)
    in_range = (
        sql.SQL("s.{} = _retl_i").format(ordinal)  # equality: always planned as an index probe
        if in_plpgsql
        else sql.SQL("s.{} BETWEEN %s AND %s").format(ordinal)
    )
    values = [
        col.cast(sql.SQL("s.{}").format(sql.Identifier(f"c{i}"))) for i, col in enumerate(columns)
    ]
    names = [sql.Identifier(c.name) for c in columns]
    key_matches = sql.SQL("{}.{} = {}").format(t, names[0], values[0]) if batch.key_field else None
    if batch.action in ("insert", "upsert"):
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} s WHERE {}").format(
            target, sql.SQL(", ").join(names), sql.SQL(", ").join(values), stage, in_range
        )
        if batch.action == "insert":
            return insert
        updates = [sql.SQL("{} = EXCLUDED.{}").format(n, n) for n in names[1:]]
        action = (
            sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(updates))
            if updates
            else sql.SQL("DO NOTHING")
        )
        return sql.SQL("{} ON CONFLICT ({}) {}").format(insert, names[0], action)
    if batch.action == "update":
        if len(columns) == 1:  # nothing to set: report which records exist
            return sql.SQL("{} s.{} FROM {} s JOIN {} {} ON {} WHERE {}").format(
                sql.SQL("PERFORM" if in_plpgsql else "SELECT"),
                ordinal,
                stage,
                target,
                t,
                key_matches,
                in_range,
            )
        sets = [sql.SQL("{} = {}").format(n, v) for n, v in zip(names[1:], values[1:], strict=True)]
        update = sql.SQL("UPDATE {} AS {} SET {} FROM {} s WHERE {} AND {}").format(
            target, t, sql.SQL(", ").join(sets), stage, key_matches, in_range
        )
        return update if in_plpgsql else sql.SQL("{} RETURNING s.{}").format(update, ordinal)
    delete = sql.SQL("DELETE FROM {} AS {} USING {} s WHERE {} AND {}").format(
        target, t, stage, key_matches, in_range
    )
    return delete if in_plpgsql else sql.SQL("{} RETURNING s.{}").format(delete, ordinal)


# A temporary function that runs the statement record by record, each in its own subtransaction,
# and returns the records that failed (with the message) or matched: one round trip for a whole
# range of suspects. The statement is static PL/pgSQL, so it is planned once per batch.
_EACH_RECORD = """
CREATE OR REPLACE FUNCTION pg_temp._retl_each_record(_retl_lo bigint, _retl_hi bigint)
RETURNS TABLE (_retl_out_ord bigint, _retl_out_message text) LANGUAGE plpgsql
AS $_retl_$
DECLARE _retl_i bigint; _retl_n bigint; _retl_message text; _retl_detail text;
BEGIN
  FOR _retl_i IN _retl_lo.._retl_hi LOOP
    _retl_n := 0;
    _retl_message := NULL;
    BEGIN
      {statement};
      GET DIAGNOSTICS _retl_n = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
      IF left(SQLSTATE, 2) NOT IN ({record_classes}) THEN RAISE; END IF;
      GET STACKED DIAGNOSTICS _retl_detail = PG_EXCEPTION_DETAIL;
      _retl_message := SQLERRM || coalesce(': ' || nullif(_retl_detail, ''), '');
    END;
    IF _retl_message IS NOT NULL OR _retl_n > 0 THEN
      _retl_out_ord := _retl_i;
      _retl_out_message := _retl_message;
      RETURN NEXT;
    END IF;
  END LOOP;
END
$_retl_$
"""


class _StatementRun:
    """Runs the batch statement over an ordinal range. On a record error it rolls back to a
    savepoint and bisects the range; ranges of fewer than `each_below` suspects are then tried
    record by record on the server (or, without PL/pgSQL, bisected down to single records)."""

    each_below = 256

    def __init__(self, conn: Connection, batch: Batch, table: _Table, columns: list[_Column]):
        self.conn = conn
        self.statement = _statement(batch, table, columns)
        self.by_record = _statement(batch, table, columns, in_plpgsql=True)
        self.rejected: dict[int, str] = {}
        self.found: set[int] = set()
        self._query = b""
        self._isolating = False
        self._server_loop = True

    def apply(self, cur: Cursor, lo: int, hi: int) -> None:
        if not self._query:
            self._query = self.statement.as_bytes(cur)
        try:
            with self.conn.transaction():
                cur.execute(self._query, (lo, hi), prepare=False)  # ranges vary: plan each
                if cur.description is not None:
                    self.found.update(row[0] for row in cur.fetchall())
            return
        except psycopg.Error as exc:
            if not is_record_error(exc):
                raise
            if lo == hi:
                self.rejected[lo] = db_message(exc)
                return
        self._start_isolating(cur)
        if hi - lo < self.each_below and self._server_loop and self._each_record(cur, lo, hi):
            return
        mid = (lo + hi) // 2
        self.apply(cur, lo, mid)
        self.apply(cur, mid + 1, hi)

    def _start_isolating(self, cur: Cursor) -> None:
        if self._isolating:
            return
        self._isolating = True
        stage, ordinal = sql.Identifier(_STAGE), sql.Identifier(_ORD)
        cur.execute(sql.SQL("CREATE INDEX ON {} ({})").format(stage, ordinal))
        cur.execute(sql.SQL("ANALYZE {}").format(stage))
        function = sql.SQL(_EACH_RECORD).format(
            statement=self.by_record,
            record_classes=sql.SQL(", ").join(
                sql.Literal(c) for c in sorted(_RECORD_ERROR_CLASSES)
            ),
        )
        try:
            with self.conn.transaction():
                cur.execute(function)
        except psycopg.Error as exc:
            if _is_transient(exc):
                raise
            self._server_loop = False  # no PL/pgSQL here (or not allowed): bisect instead

    def _each_record(self, cur: Cursor, lo: int, hi: int) -> bool:
        """Try records lo..hi one by one on the server."""
        try:
            with self.conn.transaction():
                outcome = cur.execute(
                    "SELECT * FROM pg_temp._retl_each_record(%s, %s)", (lo, hi)
                ).fetchall()
        except psycopg.Error as exc:
            if is_record_error(exc) or _is_transient(exc):
                raise
            self._server_loop = False
            return False
        for ord, message in outcome:
            if message is None:
                self.found.add(ord)
            else:
                self.rejected[ord] = _one_line(message)
        return True
