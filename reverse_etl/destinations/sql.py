"""Any SQLAlchemy database as a destination: MySQL/MariaDB, SQLite, DuckDB, PostgreSQL ...

A batch is applied with executemany in one transaction. When it fails on some records, the batch
is re-run in halves, each in a fresh transaction, until every failing record is isolated: the
others land and each failing one is reported with the database's message. `update` never creates
a record: the rows its statement did not match are rejected. DuckDB takes the batch as an Arrow
table and applies it with set-based statements instead (its executemany is slow).

MySQL/MariaDB through PyMySQL load a batch with `LOAD DATA LOCAL INFILE` into a temporary table
of the target's column types, then apply it with one statement (INSERT ... ON DUPLICATE KEY
UPDATE, UPDATE ... JOIN, DELETE ... JOIN), bisecting the stage's ordinal range inside savepoints
when it fails on some records; one transaction per batch. A batch whose load needed any value
changed (LOAD DATA only warns) is sent with executemany instead, so a bad value is rejected with
the database's message, never stored altered. Sessions run in strict mode (STRICT_ALL_TABLES).

Exactly once (SPEC §6.4): every transaction that applies records of a batch also inserts the
batch's delivery marker into `retl_deliveries` (created on first use in the URL's database;
ledger.py) for exactly those records: one row per batch for LOAD DATA (savepoints inside one
transaction), one per committed range when executemany or DuckDB bisect a batch over several
transactions. A transaction retried after a lost connection first looks for its marker, so a
COMMIT whose answer was lost is never applied twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from reverse_etl.destinations import fit, ledger
from reverse_etl.destinations.base import Batch, BatchResult, Capabilities, lazy_module, register
from reverse_etl.destinations.tables import (
    Column,
    Table,
    TableDestination,
    TableOptions,
    not_found,
)
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql as sa_mysql
    from sqlalchemy.dialects import postgresql as sa_postgresql
    from sqlalchemy.dialects import sqlite as sa_sqlite

    from reverse_etl.destinations import mysql_load
else:  # imported on first use: `retl validate` needs only the declarations below
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    mysql_load = lazy_module("reverse_etl.destinations.mysql_load")
    sa = lazy_module("sqlalchemy")
    sa_mysql = lazy_module("sqlalchemy.dialects.mysql")
    sa_postgresql = lazy_module("sqlalchemy.dialects.postgresql")
    sa_sqlite = lazy_module("sqlalchemy.dialects.sqlite")

_T = TypeVar("_T")

# MySQL/MariaDB errors about a record's values that pymysql raises as OperationalError/InternalError:
# bad null, out of range, truncated, bad value, no default, too long, FK, invalid JSON, CHECK
# constraint (MySQL 3819, MariaDB 4025), SIGNAL in a trigger (1644).
_MYSQL_RECORD_ERRORS = frozenset(
    {1048, 1062, 1263, 1264, 1265, 1292, 1364, 1366, 1367, 1406, 1411, 1451, 1452, 1644, 1690}
    | {3140, 3819, 4025}
)
_NATIVE_UPSERT = frozenset({"mysql", "mariadb", "sqlite", "postgresql", "duckdb"})
# Databases where a run claims its target (ledger.py, claims).
_CLAIMING = frozenset({"mysql", "mariadb", "sqlite", "postgresql"})
_ORD = "_retl_ord"
_STAGE = "_retl_stage"


_log = logging.getLogger(__name__)


class SqlOptions(TableOptions):
    """Options of a `sql` destination: the SQLAlchemy url and create_tables; `bulk_load` lets
    MySQL/MariaDB (PyMySQL) batches use LOAD DATA LOCAL INFILE (false: executemany only)."""

    bulk_load: bool = True


_Table = Table[Column]


def resolve_url(url: str, project_root: Path) -> sa.URL:
    """The URL with a relative SQLite/DuckDB file made absolute from the project root (and its
    folder created)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DestinationError(
            "the destination url is not a valid SQLAlchemy URL",
            hint="e.g. mysql+pymysql://user:${PASSWORD}@host/db or sqlite:///out/app.sqlite",
        ) from exc
    database = parsed.database
    if (
        parsed.get_backend_name() in ("sqlite", "duckdb")
        and database
        and database != ":memory:"
        and not database.startswith(("file:", "md:", "motherduck:"))
    ):
        path = Path(database)
        if not path.is_absolute():
            path = project_root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
    return parsed


def split_object(object: str) -> tuple[str | None, str]:
    """`table` or `schema.table` (schema: database for MySQL, attached database for SQLite)."""
    schema, dot, name = object.strip().rpartition(".")
    if not name or (dot and not schema):
        raise DestinationError(
            f"'{object}' is not a table name", hint="write table or schema.table"
        )
    return (schema or None), name


def _first_lines(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # DuckDB appends the statement with a caret ("LINE 1: ...") after the message.
    kept = [line for line in lines if not line.startswith(("LINE ", "^"))]
    message = " ".join(kept[:2]) if kept else ""
    return message if len(message) <= 1000 else message[:997] + "..."


def _sa_type(dtype: pa.DataType, dialect: str, key: bool) -> sa.types.TypeEngine[Any]:
    """A SQLAlchemy column type for an Arrow type (for create_tables)."""
    t = pa.types
    if t.is_dictionary(dtype):
        return _sa_type(dtype.value_type, dialect, key)
    if t.is_boolean(dtype):
        return sa.Boolean()
    if t.is_int8(dtype) or t.is_int16(dtype) or t.is_uint8(dtype):
        return sa.SmallInteger()
    if t.is_int32(dtype) or t.is_uint16(dtype):
        return sa.Integer()
    if t.is_integer(dtype):
        return sa.BigInteger()
    if t.is_float16(dtype) or t.is_float32(dtype):
        return sa.Float()
    if t.is_floating(dtype):
        return sa.Double()
    if t.is_decimal(dtype):
        return sa.Numeric(min(dtype.precision, 65), dtype.scale)
    if t.is_date(dtype):
        return sa.Date()
    if t.is_time(dtype):
        return sa.Time()
    if t.is_timestamp(dtype):
        if dialect in ("mysql", "mariadb"):  # DATETIME alone keeps no fraction of a second
            return sa_mysql.DATETIME(fsp=6)
        return sa.DateTime(timezone=bool(dtype.tz))
    if t.is_duration(dtype):
        return sa.Interval()
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_fixed_size_binary(dtype):
        return sa.LargeBinary(255) if key and dialect in ("mysql", "mariadb") else sa.LargeBinary()
    if t.is_nested(dtype):
        return sa.JSON() if dialect not in ("duckdb",) else sa.Text()
    # MySQL cannot index an unbounded TEXT column.
    return sa.String(255) if key and dialect in ("mysql", "mariadb") else sa.Text()


def _converter(dtype: pa.DataType, dialect: str, target: str) -> Callable[[Any], Any] | None:
    """How to turn a Python value of this Arrow type into one the dialect's driver takes."""
    t = pa.types
    if t.is_dictionary(dtype):
        dtype = dtype.value_type
    if t.is_nested(dtype):
        if dialect == "postgresql" and "JSON" not in target.upper():
            return None  # psycopg adapts lists to arrays
        return lambda v: json.dumps(v, default=str)
    if dialect in ("mysql", "mariadb", "sqlite") and t.is_timestamp(dtype) and dtype.tz:
        utc = dt.UTC

        def naive_utc(v: dt.datetime) -> Any:
            v = v.astimezone(utc).replace(tzinfo=None)
            return v.isoformat(sep=" ") if dialect == "sqlite" else v

        return naive_utc
    if dialect == "sqlite":
        if t.is_timestamp(dtype):
            return lambda v: v.isoformat(sep=" ")
        if t.is_date(dtype) or t.is_time(dtype):
            return lambda v: v.isoformat()
        if t.is_decimal(dtype):
            return str
        if t.is_duration(dtype):
            return lambda v: v.total_seconds()
    return None


def _python_columns(records: pa.Table, names: list[str], table: _Table, dialect: str) -> list[Any]:
    """The batch's columns as Python lists the driver accepts (Arrow -> Python once per batch)."""
    columns = []
    for name in names:
        column = records.column(name)
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
        values = column.to_pylist()
        convert = _converter(column.type, dialect, table.columns[name].type)
        if convert is not None:
            values = [None if v is None else convert(v) for v in values]
        columns.append(values)
    return columns


# Records per batch of a MySQL/MariaDB destination loaded with LOAD DATA (see default_batch_size).
MYSQL_BULK_BATCH_SIZE = 50_000


@register("sql")
class SqlDestination(TableDestination[_Table]):
    """Tables of any database SQLAlchemy can reach; objects are `table` or `schema.table`."""

    options_model = SqlOptions
    capabilities = Capabilities(
        guarantee="exactly-once",
        resolves=True,  # through the delivery ledger: a batch in doubt committed or not
        default_batch_size=5_000,
    )
    options: SqlOptions

    attempts: ClassVar[int] = 3
    retry_wait_seconds: ClassVar[float] = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._url = resolve_url(self.options.url, self.project_root)
        self._engine: sa.Engine | None = None
        self._bulk_load = (
            self.options.bulk_load
            and self.dialect in ("mysql", "mariadb")
            and self._url.get_driver_name() == "pymysql"
        )
        self._stage_columns: dict[str, dict[str, mysql_load.StageColumn]] = {}
        self._ledger = ledger.SqlLedger()

    def default_batch_size(self) -> int:
        # LOAD DATA pays per statement, not per row: 50,000 rows a batch came within 1.13-1.23x
        # of the raw LOAD DATA + merge on 1M rows, 5,000 at 1.58-2.10x (bench/mysql_load.py).
        return MYSQL_BULK_BATCH_SIZE if self._bulk_load else super().default_batch_size()

    # -- connection -------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self._url.get_backend_name()

    @property
    def _where(self) -> str:
        return self._url.render_as_string(hide_password=True)

    def _get_engine(self) -> sa.Engine:
        if self._engine is None:
            try:
                engine = sa.create_engine(
                    self._url,
                    pool_pre_ping=True,
                    # As the URL says (`?local_infile=0` turns it off), else on for LOAD DATA.
                    connect_args={"local_infile": True}
                    if self._bulk_load and "local_infile" not in self._url.query
                    else {},
                )
            except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
                raise DestinationError(
                    f"destination '{self.name}' cannot use {self._where}: {_first_lines(str(exc))}",
                    hint="check the url's dialect and that its driver is installed",
                ) from exc
            if self.dialect == "duckdb":
                sa.event.listen(engine, "connect", _duckdb_session)
            if self.dialect in ("mysql", "mariadb"):
                sa.event.listen(engine, "connect", _mysql_session)
            self._engine = engine
        return self._engine

    def open(self) -> None:
        self._in_transaction(lambda conn: None)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        self._tables.clear()
        self._stage_columns.clear()
        if engine is not None:
            engine.dispose()

    def _in_transaction(
        self,
        work: Callable[[sa.Connection], _T],
        committed: Callable[[sa.Connection], None] | None = None,
    ) -> _T:
        """Run `work` in a fresh transaction; reconnect and retry when the connection fails.
        Before a retry, `committed` may raise _AlreadyCommitted: the failed attempt's COMMIT
        went through (its delivery marker is there), so the work is not done twice."""
        last: Exception | None = None
        tried = False
        maybe_committed = False  # an attempt failed once its work was done: at COMMIT
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_wait_seconds * 2 ** (attempt - 1))
            try:
                conn = self._get_engine().connect()
            except sa.exc.DBAPIError as exc:
                last = exc
                continue
            committing = False
            try:
                with conn, conn.begin():
                    if tried and committed is not None:
                        committed(conn)
                        maybe_committed = False  # its marker is not there: it did not commit
                    tried = True
                    result = work(conn)
                    committing = True
                return result
            except sa.exc.DBAPIError as exc:
                if not (exc.connection_invalidated or self._is_conflict(exc)):
                    raise
                maybe_committed = maybe_committed or committing
                last = exc
        detail = _first_lines(str(getattr(last, "orig", None) or last))
        if maybe_committed and committed is not None:  # a write whose marker tells
            raise _InDoubt(
                f"the connection to destination '{self.name}' was lost while a transaction was "
                f"committing, and the database could not be asked whether it did: {detail}"
            ) from last
        raise DestinationError(
            f"cannot use destination '{self.name}' ({self._where}): {detail}",
            hint="check the destination url and that the database is running and reachable",
        ) from last

    def _name(self, name: str) -> str:
        """An identifier as SQLAlchemy should render it: DuckDB's dialect does not know all of
        DuckDB's reserved words (`at`, ...), so there every name is quoted."""
        return sa.sql.quoted_name(name, quote=True) if self.dialect == "duckdb" else name

    def _failed(self, exc: sa.exc.DBAPIError, what: str) -> DestinationError:
        return DestinationError(
            f"destination '{self.name}' failed {what}: {self._message(exc)}",
        )

    # -- catalog ----------------------------------------------------------------------------

    def count(self, object: str) -> int | None:
        table = self._find_table(object)
        if table is None:
            return None
        target = sa.table(self._name(table.name), schema=table.schema)
        query = sa.select(sa.func.count()).select_from(target)
        try:
            return int(self._in_transaction(lambda conn: conn.execute(query).scalar_one()))
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, f"counting the records of {object}") from exc

    def objects(self) -> list[str]:
        def read(conn: sa.Connection) -> list[str]:
            if self.dialect == "duckdb":
                rows = conn.exec_driver_sql(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_catalog = current_database() "
                    "AND table_schema NOT IN ('information_schema', 'pg_catalog') "
                    "ORDER BY 1, 2"
                ).fetchall()
                default = conn.exec_driver_sql("SELECT current_schema()").scalar()
                return [name if schema == default else f"{schema}.{name}" for schema, name in rows]
            inspector = sa.inspect(conn)
            names = sorted(inspector.get_table_names() + inspector.get_view_names())
            if self.dialect == "postgresql":
                for schema in inspector.get_schema_names():
                    if schema in (inspector.default_schema_name, "information_schema"):
                        continue
                    names += sorted(f"{schema}.{n}" for n in inspector.get_table_names(schema))
            return names

        try:
            names = self._in_transaction(read)
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, "listing tables") from exc
        # retl's own delivery ledger is no object to sync to
        own = (ledger.LEDGER_TABLE, ledger.CLAIMS_TABLE)
        return [n for n in names if n.rpartition(".")[2] not in own]

    def _find_table(self, object: str) -> _Table | None:
        if object in self._tables:
            return self._tables[object]
        schema, name = split_object(object)
        try:
            if self.dialect == "duckdb":
                columns = self._in_transaction(lambda conn: _duckdb_columns(conn, schema, name))
            else:
                columns = self._in_transaction(lambda conn: _inspected_columns(conn, schema, name))
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, f"reading the columns of {object}") from exc
        if columns is None:
            return None
        table = Table(schema=schema, name=name, columns={c.name: c for c in columns})
        self._tables[object] = table
        return table

    # -- validation and setup ---------------------------------------------------------------

    def _upsert_check_hint(self, table: _Table, key: str) -> str:
        return f"add one, e.g. a UNIQUE index on {key}"

    def _upsert_batch_hint(self, table: _Table, key: str) -> str:
        return f"add a UNIQUE index or PRIMARY KEY on {key}"

    # Values the table would alter, keys its collation would merge (fit.py).

    def _fit_dialect(self) -> str | None:
        return (
            self.dialect if self.dialect in ("mysql", "mariadb", "postgresql", "duckdb") else None
        )

    def _object_names(self, object: str) -> list[str]:
        return [n for n in split_object(object) if n]

    def _column_types(self, table: _Table) -> dict[str, str]:
        if self.dialect not in ("mysql", "mariadb"):
            return super()._column_types(table)
        return {n: c.column_type for n, c in self._mysql_columns(table).items()}

    def _key_collation(self, table: _Table, key: str) -> fit.KeyCollation:
        if self.dialect not in ("mysql", "mariadb"):
            return fit.EXACT
        name = self._mysql_columns(table)[key].collation

        def pad_attribute(conn: sa.Connection) -> str | None:
            row = conn.exec_driver_sql(
                "SELECT * FROM information_schema.COLLATIONS WHERE COLLATION_NAME = %s", (name,)
            ).first()
            return None if row is None else row._mapping.get("PAD_ATTRIBUTE")  # MySQL 8 only

        return fit.mysql_collation(name, self._in_transaction(pad_attribute) if name else None)

    def _stored_keys(self, table: _Table, key: str, values: list[str]) -> list[str]:
        # Only the stored keys that are not byte-equal to a value come back: the others are
        # the records the batch means, and reading them all would cost more than the write.
        # (The LOAD DATA path joins its stage instead: `_collated_in_stage`.)
        quote = mysql_load.quote
        target = (
            quote(table.name) if not table.schema else f"{quote(table.schema)}.{quote(table.name)}"
        )
        k = quote(key)
        found: list[str] = []
        step = 10_000
        for start in range(0, len(values), step):
            chunk = tuple(values[start : start + step])
            marks = ", ".join(["%s"] * len(chunk))
            query = (
                f"SELECT {k} FROM {target} WHERE {k} IN ({marks}) AND BINARY {k} NOT IN ({marks})"
            )

            def read(
                conn: sa.Connection, query: str = query, chunk: tuple[str, ...] = chunk
            ) -> list[str]:
                return [str(r[0]) for r in conn.exec_driver_sql(query, chunk + chunk)]

            found += self._in_transaction(read)
        return found

    def _collated_in_stage(
        self, conn: sa.Connection, batch: Batch, table: _Table
    ) -> dict[int, str]:
        """On the LOAD DATA path, with the batch in the stage: the records whose key matches
        a stored record only by the key column's collation (not byte for byte), rejected and
        taken out of the stage, so the merge never touches that other record."""
        key = batch.key_field
        if batch.action == "insert" or key is None or fit.text_keys(batch) is None:
            return {}
        collation = self._cached_collation(table, key)
        if collation.exact:
            return {}
        quote = mysql_load.quote
        target = (
            quote(table.name) if not table.schema else f"{quote(table.schema)}.{quote(table.name)}"
        )
        k, c0, ord = quote(key), quote(mysql_load.stage_name(0)), quote(_ORD)
        rows = conn.exec_driver_sql(
            f"SELECT s.{ord}, t.{k} FROM {quote(_STAGE)} s JOIN {target} t ON t.{k} = s.{c0} "
            f"WHERE BINARY t.{k} <> BINARY s.{c0}"
        ).fetchall()
        if not rows:
            return {}
        keys = batch.records.column(key)
        rejected = {
            int(o): fit.matched_message(keys[int(o)].as_py(), str(other), collation)
            for o, other in rows
        }
        ordinals = ", ".join(str(o) for o in rejected)
        conn.exec_driver_sql(f"DELETE FROM {quote(_STAGE)} WHERE {ord} IN ({ordinals})")
        return rejected

    def _create_table(self, object: str, schema: pa.Schema, key_field: str | None) -> None:
        schema_name, name = split_object(object)
        columns = [
            sa.Column(
                self._name(f.name),
                _sa_type(f.type, self.dialect, f.name == key_field),
                primary_key=f.name == key_field,
                autoincrement=False,
            )
            for f in schema
        ]
        table = sa.Table(
            self._name(name),
            sa.MetaData(),
            *columns,
            schema=self._name(schema_name) if schema_name else None,
        )

        def create(conn: sa.Connection) -> None:
            if schema_name and self.dialect in ("duckdb", "postgresql"):
                conn.execute(sa.schema.CreateSchema(schema_name, if_not_exists=True))
            table.create(conn, checkfirst=True)

        try:
            self._in_transaction(create)
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, f"creating table {object}") from exc
        self._tables.pop(object, None)

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> BatchResult:
        if batch.size == 0:
            return BatchResult()
        table = self._table(batch.object)
        names = self._batch_columns(batch, table)
        bulk = self._bulk_load and all(
            mysql_load.loadable(batch.records.column(n).type) for n in names
        )
        # fit.py: refuse what the table would alter (LOAD DATA looks keys up in its stage)
        unfit = self._unfit(batch, table, names, look_up=not bulk)
        if unfit:
            return fit.deliver_without(batch, unfit, self.deliver)
        if batch.marker is not None:
            self._ensure_ledger()
        if self.dialect in ("mysql", "mariadb"):
            unstorable = _non_finite_rows(batch.records.select(names))
            if unstorable:
                return fit.deliver_without(batch, unstorable, self.deliver)
        try:
            return self._deliver_checked(batch, table, names, bulk)
        except _InDoubt as exc:
            # Not "rolled back": the COMMIT may have gone through. The ledger tells (resolve).
            return BatchResult(in_doubt=dict.fromkeys(range(batch.size), exc.message))

    def _deliver_checked(
        self, batch: Batch, table: _Table, names: list[str], bulk: bool
    ) -> BatchResult:
        try:
            if bulk:
                loaded = self._load_data(batch, table, names)
                if loaded is not None:
                    return loaded
                unfit = self._unfit(batch, table, names)  # fit.py: executemany looks keys up
                if unfit:
                    return fit.deliver_without(batch, unfit, self.deliver)
            if self.dialect == "duckdb":
                run: _Run = _DuckDBRun(self, batch, table, names)
            else:
                run = _ExecuteManyRun(self, batch, table, names)
            run.apply(0, batch.size)
            if batch.action == "upsert" and self.dialect not in _NATIVE_UPSERT:
                run.insert_missing()
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, f"writing to {table.display}") from exc
        if batch.action == "update":
            run.rejected.update(not_found(batch, table, run.missing))
        return BatchResult.committed(batch.size, run.rejected)

    def _load_data(self, batch: Batch, table: _Table, names: list[str]) -> BatchResult | None:
        """The batch through LOAD DATA LOCAL INFILE, in one transaction (retried whole when the
        connection fails); None when it must go through executemany instead."""
        columns = self._mysql_columns(table)
        stage = [columns[n] for n in names]
        quote = mysql_load.quote
        target = (
            quote(table.name) if not table.schema else f"{quote(table.schema)}.{quote(table.name)}"
        )
        if self._loads_straight(batch, lambda: self._is_empty(target)):
            loaded = self._load_straight(batch, target, names)
            if loaded is not None:
                return loaded

        def load(conn: sa.Connection) -> _LoadDataRun:
            run = _LoadDataRun(self, batch, table, names, conn)
            if not run.load(stage):
                raise _NotLoadedExactly
            run.apply(0, batch.size)
            conn.exec_driver_sql(f"DROP TEMPORARY TABLE {mysql_load.quote(_STAGE)}")
            if batch.marker is not None:
                failed = run.rejected.keys() | (run.missing if batch.action == "update" else ())
                applied = [i for i in range(batch.size) if i not in failed]
                self._ledger.write(conn, batch.marker, applied)
            return run

        try:
            run = self._in_transaction(load, self._committed_check(batch, 0))
        except _AlreadyCommitted as done:
            return done.result(batch)
        except _NotLoadedExactly:
            return None
        except sa.exc.DBAPIError as exc:
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code not in mysql_load.LOCAL_INFILE_REFUSED:
                raise
            self._bulk_load = False
            _log.warning(
                "destination '%s': the server refuses LOAD DATA LOCAL INFILE (%s); "
                "batches are sent with executemany, which is several times slower. "
                "Set local_infile = ON on the server (SET GLOBAL local_infile = 1), or "
                "bulk_load: false on the destination to silence this",
                self.name,
                self._message(exc),
            )
            return None
        if batch.action == "update":
            run.rejected.update(not_found(batch, table, run.missing))
        return BatchResult.committed(batch.size, run.rejected)

    def _is_empty(self, target: str) -> bool:
        query = f"SELECT NOT EXISTS (SELECT 1 FROM {target})"
        return bool(self._in_transaction(lambda conn: conn.exec_driver_sql(query).scalar()))

    def _load_straight(self, batch: Batch, target: str, names: list[str]) -> BatchResult | None:
        """A first load into an empty table: LOAD DATA straight into it, in one transaction.
        None (rolled back) when any value or record was not taken as it is (LOAD DATA LOCAL
        only warns: a duplicate key, a bad value), so the stage path isolates it."""
        records = batch.records.select(names)
        statement_columns = names
        try:
            with self._get_engine().connect() as conn, conn.begin() as transaction:
                loaded, exact = _load_file(
                    conn,
                    mysql_load.file_lines(records, ordinals=False),
                    lambda path: mysql_load.load_statement(
                        path, records, target, statement_columns
                    ),
                )
                if loaded != records.num_rows or not exact:
                    transaction.rollback()
                    return None
                if batch.marker is not None:
                    self._ledger.write(conn, batch.marker, range(batch.size))
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated and batch.marker is not None:
                marker = batch.marker  # the COMMIT may have gone through: the ledger tells
                try:
                    entries = self._in_transaction(lambda c: self._ledger.find(c, marker, 0))
                except DestinationError as lost:
                    raise _InDoubt(lost.message) from exc
                if entries:
                    return ledger.resolved(marker, entries)
            if self.is_record_error(exc) or exc.connection_invalidated or self._is_conflict(exc):
                return None  # the stage path retries, isolates or reports it
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            if code in mysql_load.LOCAL_INFILE_REFUSED:
                return None  # the stage path meets the same refusal and says so
            self._stop_loading_straight(batch)
            return None
        return BatchResult.committed(batch.size)

    def _mysql_columns(self, table: _Table) -> dict[str, mysql_load.StageColumn]:
        """The target's columns with their full MySQL types (for the stage), cached."""
        key = table.display
        if key not in self._stage_columns:

            def read(conn: sa.Connection) -> list[Any]:
                return list(
                    conn.exec_driver_sql(
                        "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME "
                        "FROM information_schema.COLUMNS "
                        "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
                        (table.schema, table.name),
                    ).fetchall()
                )

            self._stage_columns[key] = {
                str(r[0]): mysql_load.StageColumn(str(r[0]), str(r[1]), r[2], r[3])
                for r in self._in_transaction(read)
            }
        return self._stage_columns[key]

    # -- delivery markers -------------------------------------------------------------------

    def _ensure_ledger(self) -> None:
        if self._ledger.ready:
            return
        try:
            self._in_transaction(self._ledger.ensure)
        except sa.exc.DBAPIError as exc:
            statement = self._in_transaction(self._ledger.create_statement)
            raise DestinationError(
                f"destination '{self.name}' cannot create its delivery ledger "
                f"{ledger.LEDGER_TABLE} (how retl records what each batch committed, so that a "
                f"killed run neither loses nor repeats a batch): {self._message(exc)}",
                hint=f"have the database's owner run: {' '.join(statement.split())}; then "
                f"grant SELECT, INSERT, DELETE on {ledger.LEDGER_TABLE} to the destination's user",
            ) from exc

    def _committed_check(self, batch: Batch, part: int) -> Callable[[sa.Connection], None] | None:
        """The check `_in_transaction` runs before retrying the transaction of a batch's `part`."""
        marker = batch.marker
        if marker is None:
            return None

        def check(conn: sa.Connection) -> None:
            entries = self._ledger.find(conn, marker, part)
            if entries:
                raise _AlreadyCommitted(entries)

        return check

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt: applied exactly when a marker of their batch lists them. Records
        an earlier run left in doubt carry no marker: that run's markers were read back into
        state before this run planned, so these were not applied."""
        marker = batch.marker
        if marker is None:
            if batch.run_id is None:
                return super().resolve(batch)
            why = "not applied: no delivery marker of its batch was found in the destination"
            return BatchResult(retry=dict.fromkeys(range(batch.size), why))
        try:
            entries = self._in_transaction(lambda conn: self._ledger.find(conn, marker))
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, "reading its delivery ledger") from exc
        return ledger.resolved(marker, entries)

    def recover_markers(self, sync: str, target: str) -> list[ledger.LedgerEntry]:
        try:
            return self._in_transaction(lambda conn: self._ledger.read(conn, sync, target))
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, "reading its delivery ledger") from exc

    def forget_markers(self, sync: str, target: str, claim: ledger.Claim | None = None) -> None:
        try:
            self._in_transaction(lambda conn: self._ledger.forget(conn, sync, target, claim))
        except sa.exc.DBAPIError as exc:
            raise self._failed(exc, "cleaning its delivery ledger") from exc

    def claim(
        self, sync: str, target: str, object: str, label: str, holder: ledger.ClaimHolder
    ) -> ledger.Claim | None:
        """Claims on MySQL/MariaDB and SQLite (`retl_claims` in the URL's database); none on
        other databases (DuckDB admits one writing process per file anyway)."""
        if self.dialect not in _CLAIMING:
            return None

        def take(conn: sa.Connection) -> ledger.Claim:
            return self._ledger.claim(conn, sync, target, label, holder)

        try:
            try:
                return self._in_transaction(take)
            except sa.exc.IntegrityError:
                return self._in_transaction(take)  # another run's first claim came first
        except sa.exc.DBAPIError as exc:
            statement = self._in_transaction(self._ledger.claims_statement)
            raise DestinationError(
                self._failed(exc, f"claiming {label} in {ledger.CLAIMS_TABLE}").message,
                hint=f"have the database's owner run: {' '.join(statement.split())}; then grant "
                f"SELECT, INSERT, UPDATE on {ledger.CLAIMS_TABLE} to the destination's user (a "
                "run claims its table there, so that two overlapping runs never both deliver)",
            ) from exc

    # -- errors -----------------------------------------------------------------------------

    def _is_conflict(self, exc: sa.exc.DBAPIError) -> bool:
        """A deadlock, lock timeout or busy database: the transaction may simply be retried."""
        orig = exc.orig
        if self.dialect in ("mysql", "mariadb") and orig is not None and orig.args:
            return orig.args[0] in (1205, 1213)
        if self.dialect == "postgresql":
            return str(getattr(orig, "sqlstate", "") or "")[:2] == "40"
        if self.dialect == "sqlite":
            return "database is locked" in str(orig)
        return False

    def is_record_error(self, exc: sa.exc.DBAPIError) -> bool:
        """True when the database blames the values of the record(s), not the statement."""
        orig = exc.orig
        if self.dialect == "postgresql" and orig is not None:
            from reverse_etl.destinations.postgres import is_record_error

            return is_record_error(orig)
        if self.dialect in ("mysql", "mariadb") and orig is not None and orig.args:
            return orig.args[0] in _MYSQL_RECORD_ERRORS or isinstance(
                exc, sa.exc.IntegrityError | sa.exc.DataError
            )
        return isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError)

    def _message(self, exc: sa.exc.DBAPIError) -> str:
        orig = exc.orig
        if orig is None:
            return _first_lines(str(exc))
        if self.dialect == "postgresql":
            from reverse_etl.destinations.postgres import db_message

            return db_message(orig)
        if self.dialect in ("mysql", "mariadb") and len(orig.args) >= 2:
            return _first_lines(str(orig.args[1]))
        return _first_lines(str(orig))


def _non_finite_rows(records: pa.Table) -> dict[int, str]:
    """Rows holding NaN or infinity, which MySQL/MariaDB have no value for."""
    rejected: dict[int, str] = {}
    for name in records.column_names:
        column = records.column(name)
        if pa.types.is_floating(column.type):
            bad = pc.invert(pc.fill_null(pc.is_finite(column), True))
            for row in pc.indices_nonzero(bad).to_pylist():
                rejected.setdefault(
                    row, f"column '{name}' holds NaN or infinity, which MySQL cannot store"
                )
    return rejected


def _mysql_session(dbapi_connection: Any, connection_record: Any) -> None:
    """Strict mode: a value that does not fit its column is an error (a rejected record), not a
    warning and a silently altered value."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')")


def _duckdb_session(dbapi_connection: Any, connection_record: Any) -> None:
    """Zoned timestamps written to TIMESTAMP columns become UTC, as with MySQL and SQLite,
    whatever the machine's time zone."""
    with contextlib.suppress(Exception):  # without ICU, DuckDB already works in UTC
        dbapi_connection.execute("SET TimeZone = 'UTC'")


def _inspected_columns(conn: sa.Connection, schema: str | None, name: str) -> list[Column] | None:
    inspector = sa.inspect(conn)
    if not inspector.has_table(name, schema=schema):
        return None
    # SQLAlchemy reads MySQL/MariaDB names from SHOW CREATE TABLE and leaves their backticks
    # escaped (`a``b` comes back as "a``b"), so they are unescaped here.
    real = _unescape_backticks if conn.dialect.name in ("mysql", "mariadb") else str
    unique: set[str] = set()
    primary = [
        real(n)
        for n in inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    ]
    if len(primary) == 1:
        unique.add(primary[0])
    for constraint in inspector.get_unique_constraints(name, schema=schema):
        if len(constraint["column_names"]) == 1:
            unique.add(real(constraint["column_names"][0]))
    for index in inspector.get_indexes(name, schema=schema):
        names = index["column_names"]
        if index["unique"] and len(names) == 1 and names[0] is not None:
            unique.add(real(names[0]))
    columns = []
    for column in inspector.get_columns(name, schema=schema):
        try:
            type_name = column["type"].compile(dialect=conn.dialect)
        except Exception:  # a type SQLAlchemy reflects but cannot render
            type_name = str(column["type"].__class__.__name__)
        column_name = real(column["name"])
        nullable = bool(column["nullable"]) and column_name not in primary
        computed = column.get("computed") is not None
        identity = column.get("identity")
        generated = computed or bool(identity and identity.get("always"))
        defaulted = (
            column.get("default") is not None
            or column.get("autoincrement") is True
            or computed
            or identity is not None
        )
        columns.append(
            Column(
                name=column_name,
                type=type_name,
                nullable=nullable,
                unique=column_name in unique,
                required=not nullable and not defaulted,
                writable=not generated,
            )
        )
    return columns


def _unescape_backticks(name: str) -> str:
    return name.replace("``", "`")


def _duckdb_columns(conn: sa.Connection, schema: str | None, name: str) -> list[Column] | None:
    """DuckDB columns from its catalog (SQLAlchemy's inspector fails on DuckDB 2.0)."""
    schema = schema or str(conn.exec_driver_sql("SELECT current_schema()").scalar())
    rows = conn.exec_driver_sql(
        "SELECT column_name, data_type, is_nullable = 'YES', column_default IS NOT NULL "
        "FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        (schema, name),
    ).fetchall()
    if not rows:
        return None
    constraints = conn.exec_driver_sql(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE database_name = current_database() AND schema_name = ? AND table_name = ? "
        "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
        (schema, name),
    ).fetchall()
    unique = {names[0] for (names,) in constraints if len(names) == 1}
    indexes = conn.exec_driver_sql(
        "SELECT expressions FROM duckdb_indexes() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ? AND is_unique",
        (schema, name),
    ).fetchall()
    for (expressions,) in indexes:  # '[email]', '[\'"Odd Name"\']', '[email, id]'
        inner = str(expressions)[1:-1].strip("'")
        if len(inner) > 1 and inner[0] == inner[-1] == '"':
            unique.add(inner[1:-1].replace('""', '"'))
        elif "," not in inner:
            unique.add(inner)
    return [
        Column(
            name=n,
            type=t,
            nullable=bool(null),
            unique=n in unique,
            required=not null and not defaulted,
        )
        for n, t, null, defaulted in rows
    ]


class _Run:
    """Applies a batch over row ranges [lo, hi); on a record error, re-runs halves in fresh
    transactions until each failing record is isolated. For update, rows whose record the
    statement did not match end up in `missing`."""

    def __init__(self, dest: SqlDestination, batch: Batch, table: _Table, names: list[str]):
        self.dest = dest
        self.batch = batch
        self.table = table
        self.names = names
        self.rejected: dict[int, str] = {}
        self.missing: list[int] = []

    def execute(self, conn: sa.Connection, lo: int, hi: int) -> int | None:
        """Apply rows lo..hi-1; for update, return how many of them matched a record."""
        raise NotImplementedError

    # Whether each range commits on its own, with its own delivery marker (part = its first
    # row); False when ranges are savepoints of the batch's one transaction.
    marks_ranges = True

    def transaction(
        self,
        work: Callable[[sa.Connection], _T],
        committed: Callable[[sa.Connection], None] | None = None,
    ) -> _T:
        """Run `work` so that a failure undoes exactly its own changes."""
        return self.dest._in_transaction(work, committed)

    def _range(self, conn: sa.Connection, lo: int, hi: int) -> int | None:
        """Apply rows lo..hi-1 and, when each of them was applied, commit their marker."""
        matched = self.execute(conn, lo, hi)
        marker = self.batch.marker
        if self.marks_ranges and marker is not None and (matched is None or matched == hi - lo):
            self.dest._ledger.write(conn, marker, range(lo, hi), part=lo)
        elif self.marks_ranges and marker is not None and marker.claim is not None:
            self.dest._ledger.check(conn, marker.claim)  # no marker, still fenced
        return matched

    def apply(self, lo: int, hi: int) -> None:
        committed = self.dest._committed_check(self.batch, lo) if self.marks_ranges else None
        try:
            matched = self.transaction(lambda conn: self._range(conn, lo, hi), committed)
        except _AlreadyCommitted:
            return  # the lost COMMIT went through: every row of the range was applied
        except sa.exc.DBAPIError as exc:
            if not self.dest.is_record_error(exc):
                raise
            if hi - lo == 1:
                self.rejected[lo] = self.dest._message(exc)
            else:
                self._split(lo, hi)
            return
        if matched is not None and matched < hi - lo:
            # Some records were missing. Updates are idempotent: re-run halves to find them.
            if matched == 0 or hi - lo == 1:
                self.missing.extend(range(lo, hi))
            else:
                self._split(lo, hi)

    def _split(self, lo: int, hi: int) -> None:
        mid = (lo + hi) // 2
        self.apply(lo, mid)
        self.apply(mid, hi)

    def insert_missing(self) -> None:
        """Upsert without a native upsert statement: insert what the update did not find."""
        raise NotImplementedError


class _ExecuteManyRun(_Run):
    """executemany of one statement with bound parameters per record."""

    def __init__(self, dest: SqlDestination, batch: Batch, table: _Table, names: list[str]):
        super().__init__(dest, batch, table, names)
        columns = _python_columns(batch.records, names, table, dest.dialect)
        self.params = [
            {f"p{i}": v for i, v in enumerate(row)} for row in zip(*columns, strict=True)
        ]
        self.target = sa.table(table.name, *[sa.column(n) for n in names], schema=table.schema)
        self.statement = self._statement(batch.action)

    def _statement(self, action: Action) -> sa.Executable:
        t, names, dialect = self.target, self.names, self.dest.dialect
        values: dict[str, Any] = {n: sa.bindparam(f"p{i}") for i, n in enumerate(names)}
        key = t.c[names[0]]
        rest = names[1:]
        if action == "insert" or (action == "upsert" and dialect not in _NATIVE_UPSERT):
            if action == "upsert":  # first update what exists, then insert the rest
                return self._statement("update")
            return sa.insert(t).values(values)
        if action == "upsert":
            if dialect in ("mysql", "mariadb"):
                my_insert = sa_mysql.insert(t).values(values)
                updates = {n: my_insert.inserted[n] for n in rest} or {names[0]: key}
                return my_insert.on_duplicate_key_update(updates)
            dialect_insert = sa_sqlite.insert if dialect == "sqlite" else sa_postgresql.insert
            insert = dialect_insert(t).values(values)
            if not rest:
                return insert.on_conflict_do_nothing(index_elements=[names[0]])
            return insert.on_conflict_do_update(
                index_elements=[names[0]], set_={n: insert.excluded[n] for n in rest}
            )
        if action == "update":
            sets: dict[str, Any] = {n: values[n] for n in rest} or {names[0]: key}
            return sa.update(t).where(key == values[names[0]]).values(sets)
        return sa.delete(t).where(key == values[names[0]])

    def execute(self, conn: sa.Connection, lo: int, hi: int) -> int | None:
        result = conn.execute(self.statement, self.params[lo:hi])
        counts = self.batch.action == "update" or (
            self.batch.action == "upsert" and self.dest.dialect not in _NATIVE_UPSERT
        )
        return result.rowcount if counts else None

    def insert_missing(self) -> None:
        rows, self.missing = self.missing, []
        insert = sa.insert(self.target).values(
            {n: sa.bindparam(f"p{i}") for i, n in enumerate(self.names)}
        )
        for row in rows:
            params = self.params[row]

            def insert_one(
                conn: sa.Connection, params: dict[str, Any] = params, row: int = row
            ) -> None:
                conn.execute(insert, params)
                if self.batch.marker is not None:  # parts after the batch's own rows
                    self.dest._ledger.write(conn, self.batch.marker, [row], self.batch.size + row)

            part = self.batch.size + row
            try:
                self.dest._in_transaction(insert_one, self.dest._committed_check(self.batch, part))
            except _AlreadyCommitted:
                continue
            except sa.exc.DBAPIError as exc:
                if not self.dest.is_record_error(exc):
                    raise
                self.rejected[row] = self.dest._message(exc)


class _DuckDBRun(_Run):
    """The batch registered as an Arrow view, applied with one set-based statement per range."""

    def __init__(self, dest: SqlDestination, batch: Batch, table: _Table, names: list[str]):
        super().__init__(dest, batch, table, names)
        ordinals = pa.array(range(batch.size), pa.int64())
        columns = [batch.records.column(n) for n in names]
        self.stage = pa.table(
            [ordinals, *columns], names=[_ORD, *[f"c{i}" for i in range(len(names))]]
        )
        quote = dest._get_engine().dialect.identifier_preparer.quote_identifier
        target = (
            quote(table.name) if not table.schema else f"{quote(table.schema)}.{quote(table.name)}"
        )
        cols = [quote(n) for n in names]
        values = [f"CAST(s.c{i} AS {table.columns[n].type})" for i, n in enumerate(names)]
        in_range = f"s.{_ORD} >= ? AND s.{_ORD} < ?"
        key_matches = f"t.{cols[0]} = {values[0]}"
        self.found_query: str | None = None
        if batch.action in ("insert", "upsert"):
            self.statement = (
                f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(values)} "
                f"FROM {_STAGE} s WHERE {in_range}"
            )
            if batch.action == "upsert":
                sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[1:])
                action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
                self.statement += f" ON CONFLICT ({cols[0]}) {action}"
        elif batch.action == "update":
            self.found_query = (
                f"SELECT count(*) FROM {_STAGE} s JOIN {target} t ON {key_matches} WHERE {in_range}"
            )
            sets = ", ".join(f"{c} = {v}" for c, v in zip(cols[1:], values[1:], strict=True))
            self.statement = (
                f"UPDATE {target} AS t SET {sets} FROM {_STAGE} s WHERE {key_matches} AND {in_range}"
                if sets
                else ""
            )
        else:
            self.statement = (
                f"DELETE FROM {target} AS t USING {_STAGE} s WHERE {key_matches} AND {in_range}"
            )

    def execute(self, conn: sa.Connection, lo: int, hi: int) -> int | None:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.register(_STAGE, self.stage)  # replaces the view a failed attempt may have left
        matched = None
        if self.found_query is not None:
            # fetchall, not scalar: DuckDB refuses more work while a result is unfinished.
            [(count,)] = conn.exec_driver_sql(self.found_query, (lo, hi)).fetchall()
            matched = int(count)
        if self.statement:
            conn.exec_driver_sql(self.statement, (lo, hi))
        raw.unregister(_STAGE)
        return matched


def _load_file(
    conn: sa.Connection, data: pa.Buffer, statement: Callable[[str], str]
) -> tuple[int, bool]:
    """Run the LOAD DATA `statement(path)` of `data` written to a temporary file: the rows
    loaded, and whether every value was taken as it is. Notes are allowed: they are roundings
    an INSERT makes as well (a decimal to its scale)."""
    fd, path = tempfile.mkstemp(prefix="retl-load-", suffix=".tsv")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        loaded = conn.exec_driver_sql(statement(path)).rowcount
    finally:
        os.unlink(path)
    warnings = conn.exec_driver_sql("SHOW WARNINGS").fetchall()
    [(count,)] = conn.exec_driver_sql("SELECT @@warning_count").fetchall()
    exact = all(str(w[0]) == "Note" for w in warnings) and int(count) <= len(warnings)
    return int(loaded), exact


class _NotLoadedExactly(Exception):
    """LOAD DATA changed a value of the batch: its transaction is rolled back."""


class _InDoubt(DestinationError):
    """A transaction's COMMIT was sent, its answer lost, and the database cannot be asked."""


class _AlreadyCommitted(Exception):
    """A transaction retried after a lost connection had committed: its marker is there."""

    def __init__(self, entries: list[ledger.LedgerEntry]) -> None:
        super().__init__("already committed")
        self.entries = entries

    def result(self, batch: Batch) -> BatchResult:
        assert batch.marker is not None
        return ledger.resolved(batch.marker, self.entries)


class _LoadDataRun(_Run):
    """MySQL/MariaDB: the batch loaded into a temporary stage with LOAD DATA LOCAL INFILE, then
    one statement per ordinal range, each inside a savepoint of the batch's transaction."""

    def __init__(
        self,
        dest: SqlDestination,
        batch: Batch,
        table: _Table,
        names: list[str],
        conn: sa.Connection,
    ):
        super().__init__(dest, batch, table, names)
        self.conn = conn
        quote = mysql_load.quote
        target = (
            quote(table.name) if not table.schema else f"{quote(table.schema)}.{quote(table.name)}"
        )
        self.statement = mysql_load.merge_statement(batch.action, target, names)
        self.missing_query = (
            mysql_load.missing_statement(target, names[0]) if batch.action == "update" else None
        )

    def load(self, columns: list[mysql_load.StageColumn]) -> bool:
        """Stage the batch; False when LOAD DATA had to change a value (it only warns), so the
        batch must be sent another way to reject that record."""
        conn = self.conn
        records = self.batch.records.select(self.names)
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {mysql_load.quote(_STAGE)}")
        conn.exec_driver_sql(mysql_load.create_stage(columns))
        loaded, exact = _load_file(
            conn,
            mysql_load.file_lines(records),
            lambda path: mysql_load.load_statement(path, records),
        )
        if loaded != records.num_rows or not exact:
            return False
        self.rejected.update(self.dest._collated_in_stage(conn, self.batch, self.table))  # fit.py
        if self.missing_query is not None:
            self.missing = sorted(int(r[0]) for r in conn.exec_driver_sql(self.missing_query))
        return True

    marks_ranges = False  # savepoints: the batch's one marker is written by `load`

    def transaction(
        self,
        work: Callable[[sa.Connection], _T],
        committed: Callable[[sa.Connection], None] | None = None,
    ) -> _T:
        with self.conn.begin_nested():
            return work(self.conn)

    def execute(self, conn: sa.Connection, lo: int, hi: int) -> int | None:
        if self.statement:
            conn.exec_driver_sql(self.statement, (lo, hi))
        return None
