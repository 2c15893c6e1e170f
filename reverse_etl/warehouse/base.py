"""What every warehouse offers: the columns of a query, and its rows as Arrow batches."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import pyarrow as pa

from reverse_etl.errors import WarehouseError
from reverse_etl.redact import redact

DEFAULT_BATCH_ROWS = 100_000

_MESSAGE_LINES = 3
# What retl puts before the source SQL, as PostgreSQL quotes it in `LINE 1: ...`.
_QUOTED_WRAPPER = re.compile(
    r'^(LINE 1: )(?:DECLARE "[^"]*" (?:NO )?(?:SCROLL )?CURSOR (?:WITH(?:OUT)? HOLD )?FOR '
    r"|SELECT \* FROM \(|COPY \()"
)
_LINE_CHARS = 300


@dataclass(frozen=True)
class Column:
    """One result column of a source query, with the warehouse's own name for its type."""

    name: str
    type: str


class Warehouse(ABC):
    """A connection to one warehouse of the project; use it as a context manager or call `close()`.

    Every failure is raised as `WarehouseError` naming the warehouse, with secrets masked.
    """

    name: str
    #: The URL with its password masked, safe to print.
    url: str
    #: The SQL dialect: "duckdb", "postgresql", "mysql", "mariadb", ...
    dialect: str
    #: Seconds a query may spend in the warehouse before it is cancelled, or None.
    query_timeout: float | None

    def quote(self, name: str) -> str:
        """An identifier quoted for this warehouse's SQL dialect."""
        return quote_identifier(name, self.dialect)

    @abstractmethod
    def columns(self, sql: str) -> list[Column]:
        """The result columns of `sql`, without reading its rows."""

    @abstractmethod
    def stream(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> pa.RecordBatchReader:
        """Every row of `sql` as Arrow batches of at most `batch_rows` rows, in bounded memory.

        The query starts (and SQL errors are raised) before this returns; errors while reading
        are raised as `WarehouseError` from the reader. An empty result still has its schema.
        """

    @abstractmethod
    def close(self) -> None:
        """Close the connection and every reader still open on it."""

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def quote_identifier(name: str, dialect: str) -> str:
    """`name` quoted for `dialect`: backticks for MySQL/MariaDB, double quotes elsewhere."""
    if dialect in ("mysql", "mariadb"):
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def source_statement(sql: str) -> str:
    """The source SQL without surrounding whitespace, trailing semicolons and `--` lines."""
    statement = sql.strip()
    while True:
        if statement.endswith(";"):
            statement = statement[:-1].rstrip()
            continue
        head, _, last_line = statement.rpartition("\n")
        if head and last_line.lstrip().startswith("--"):
            statement = head.rstrip()
            continue
        return statement


def limit_zero(sql: str) -> str:
    """`sql` wrapped so it returns its columns and no rows.

    The source stays on the first line so the database's `LINE n` positions still match it, and
    the closing parenthesis goes on a new line so a trailing `-- comment` cannot swallow it.
    """
    return f"SELECT * FROM ({source_statement(sql)}\n) AS retl_source LIMIT 0"


def check_batch_rows(batch_rows: int) -> None:
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, not {batch_rows}")


def database_message(exc: BaseException) -> str:
    """The first lines of a database's own error message, secrets removed.

    PostgreSQL quotes the failing statement with a caret under the error; the text retl wraps
    around the source (a cursor declaration, the `LIMIT 0` query) is cut out of that quote.
    """
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"ERROR {args[0]}: {args[1]}"  # MySQL/MariaDB drivers: (code, message)
    else:
        text = str(exc).strip() or exc.__class__.__name__
    lines = _unwrap_quoted_statement([line.rstrip() for line in text.splitlines() if line.strip()])
    lines = lines[:_MESSAGE_LINES]
    shortened = [line if len(line) <= _LINE_CHARS else line[:_LINE_CHARS] + "…" for line in lines]
    return redact("\n".join(shortened))


def _unwrap_quoted_statement(lines: list[str]) -> list[str]:
    unwrapped = list(lines)
    for index, line in enumerate(lines):
        match = _QUOTED_WRAPPER.match(line)
        if match is None:
            continue
        unwrapped[index] = match.group(1) + line[match.end() :]
        caret = index + 1
        if caret < len(lines) and lines[caret].strip().startswith("^"):
            width = match.end() - match.end(1)
            indent = len(lines[caret]) - len(lines[caret].lstrip())
            unwrapped[caret] = " " * max(indent - width, 0) + lines[caret].lstrip()
    return unwrapped


def format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def timeout_error(warehouse: str, seconds: float) -> WarehouseError:
    return WarehouseError(
        f"query on warehouse '{warehouse}' was cancelled after {format_seconds(seconds)} "
        "(query_timeout)",
        hint=f"make the query faster or raise warehouses.{warehouse}.query_timeout in retl.yml",
    )


def cancelled_error(warehouse: str, detail: str) -> WarehouseError:
    """A query the server cancelled (sqlstate 57014) without retl asking it to."""
    return WarehouseError(
        f"the warehouse '{warehouse}' cancelled the query (pg_cancel_backend or "
        f"statement_timeout): {detail}",
        hint="an administrator or another session cancelled it, or it ran past "
        f"statement_timeout (warehouses.{warehouse}.query_timeout in retl.yml); run again, or "
        "raise the timeout",
    )


def query_error(warehouse: str, detail: str) -> WarehouseError:
    return WarehouseError(
        f"query on warehouse '{warehouse}' failed: {detail}",
        hint="check the sync's source SQL; run it in the warehouse's own client to see more",
    )


def closed_error(warehouse: str) -> WarehouseError:
    return WarehouseError(
        f"warehouse '{warehouse}' was closed before every row of the query was read",
        hint="read the stream to its end before closing the warehouse",
    )


def not_a_query_error(warehouse: str) -> WarehouseError:
    return WarehouseError(
        f"the source SQL on warehouse '{warehouse}' returns no rows: it is not a query",
        hint="a sync's source must be one SELECT (or WITH ... SELECT) statement",
    )
