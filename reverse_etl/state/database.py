"""The SQLite file `.retl/retl.db` that holds the run log, the dead letter queue and operational
pauses: connections, schema and migrations.

SQLite in WAL mode rather than DuckDB because several processes use the file at once: `retl status`
reads while a run writes, and runs of two different syncs write side by side (a DuckDB file admits
one process only). Writers wait for each other up to `BUSY_TIMEOUT_S` instead of failing.

The file is created whole (schema included) under a temporary name and linked into place, so a
`retl.db` of 0 bytes is never retl's own doing: it is reported as damaged, never replaced.
The file and its -wal/-shm companions are private (0600), its directory 0700.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time as _time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from reverse_etl.errors import StateError
from reverse_etl.files import create_private, make_private, private_dir

SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 30.0

# Statements that take the schema from version N-1 to N. Append; never edit a released entry.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE runs (
            id          TEXT PRIMARY KEY,
            sync        TEXT NOT NULL,
            status      TEXT NOT NULL,
            trigger     TEXT NOT NULL,
            started_at  TEXT NOT NULL,
            finished_at TEXT,
            git_commit  TEXT,
            git_dirty   INTEGER NOT NULL DEFAULT 0,
            config_hash TEXT,
            counts      TEXT NOT NULL DEFAULT '{}',
            error       TEXT,
            message     TEXT
        )
        """,
        "CREATE INDEX runs_by_sync ON runs (sync, started_at)",
        "CREATE INDEX runs_by_start ON runs (started_at)",
        """
        CREATE TABLE dead_letters (
            sync            TEXT NOT NULL,
            key             TEXT NOT NULL,
            operation       TEXT NOT NULL,
            record          TEXT NOT NULL,
            error           TEXT NOT NULL,
            run_id          TEXT,
            first_failed_at TEXT NOT NULL,
            last_failed_at  TEXT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (sync, key)
        ) WITHOUT ROWID
        """,
    ),
    # Planned counts apart from applied ones: a refused run planned deletes but sent nothing.
    2: ("ALTER TABLE runs ADD COLUMN planned TEXT NOT NULL DEFAULT '{}'",),
    # Operational pauses (state/pauses.py) and the snapshot's size after each run (the report).
    3: (
        """
        CREATE TABLE pauses (
            sync       TEXT PRIMARY KEY,
            paused_by  TEXT NOT NULL,
            paused_at  TEXT NOT NULL,
            reason     TEXT NOT NULL
        ) WITHOUT ROWID
        """,
        "ALTER TABLE runs ADD COLUMN state_records INTEGER",
    ),
    # Records in doubt (state/doubts.py): sent, with no readable answer yet.
    4: (
        """
        CREATE TABLE in_doubt (
            sync       TEXT NOT NULL,
            key        TEXT NOT NULL,
            operation  TEXT NOT NULL,
            reason     TEXT NOT NULL,
            run_id     TEXT,
            since      TEXT NOT NULL,
            PRIMARY KEY (sync, key)
        ) WITHOUT ROWID
        """,
    ),
}


Dialect = Literal["sqlite", "postgres"]


class StateCursor(Protocol):
    """What a statement returns: rows to fetch or iterate, and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class StateConnection(Protocol):
    """A connection of a state database: statements with `?` placeholders (a sqlite3
    connection is one; state/postgres.py translates them for PostgreSQL)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> StateCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> StateCursor: ...


class StateDatabase(Protocol):
    """Where the run log, dead letters, records in doubt and pauses live (this SQLite file, or
    a PostgreSQL schema): RunLog & co. keep one implementation of their queries over it, with
    a per-dialect fragment where SQLite and PostgreSQL differ (`json_values`)."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def name(self) -> str:
        """Where it is, as messages name it (never a password)."""
        ...

    def read(self) -> AbstractContextManager[StateConnection]: ...

    def write(self) -> AbstractContextManager[StateConnection]: ...


def json_values(dialect: Dialect) -> str:
    """A FROM item over the elements of a JSON array of strings given as one `?` parameter,
    with the column `value`."""
    if dialect == "postgres":
        return "jsonb_array_elements_text(CAST(? AS jsonb)) AS elements(value)"
    return "json_each(?)"


def json_integer(dialect: Dialect, column: str, field: str) -> str:
    """The integer `field` of the JSON object text in `column` (NULL when absent)."""
    if dialect == "postgres":
        return f"CAST(CAST({column} AS jsonb) ->> '{field}' AS bigint)"
    return f"json_extract({column}, '$.{field}')"


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the only kind stored here)."""
    return datetime.now(UTC)


def timestamp_text(value: datetime) -> str:
    """How a moment is stored: fixed width, always UTC, so that text order is time order in SQL."""
    if value.tzinfo is None:
        raise StateError("naive datetime: pass an aware UTC datetime")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def select_by_sync(
    select: str, sync: str | None, order_by: str, limit: int | None
) -> tuple[str, list[Any]]:
    """`select` restricted to one sync (or all), ordered and optionally limited."""
    sql = select
    params: list[Any] = []
    if sync is not None:
        sql += " WHERE sync = ?"
        params.append(sync)
    sql += f" ORDER BY {order_by}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


class Database:
    """Opens short-lived connections to the shared file and keeps its schema current.

    A connection per operation keeps the objects safe to share between threads and holds no file
    handle between operations.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

    @property
    def name(self) -> str:
        return str(self.path)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for queries. A missing file reads as empty and is not created."""
        with self._errors():
            if not self.path.exists():
                conn = sqlite3.connect(":memory:", isolation_level=None)
                try:
                    self._migrate(conn)
                    yield conn
                finally:
                    conn.close()
                return
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction, committed on success, rolled back on error."""
        with self._errors():
            conn = self._connect()
            try:
                # IMMEDIATE takes the write lock up front, so waiting for another writer honours the
                # busy timeout instead of failing when a read transaction tries to upgrade.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self._create()
        self._check_not_empty()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            # WAL with NORMAL: a commit survives a killed process (what retl must survive) and
            # the file never corrupts; only an OS crash may lose the last commits. A run writes
            # here per batch (records in doubt), where a full fsync per commit cost seconds.
            conn.execute("PRAGMA synchronous = NORMAL")
            if not self._ready:
                self._prepare(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(self) -> None:
        """Create the file whole: schema and WAL mode in a private temporary file, then linked
        to `path` (another process or thread may win the race: then its file is used)."""
        private_dir(self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            create_private(tmp)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(conn)
            finally:
                conn.close()
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
        finally:
            for leftover in (
                tmp,
                tmp.with_name(tmp.name + "-wal"),
                tmp.with_name(tmp.name + "-shm"),
            ):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _check_not_empty(self) -> None:
        if self.path.stat().st_size == 0:
            raise StateError(
                f"{self.path} is empty (0 bytes): the run log and dead letter queue are lost or "
                "were never written",
                hint=f"restore it from a backup, or move it aside (mv {self.path} "
                f"{self.path}.damaged) to start a new run log; sync state is not affected",
            )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL and migrate. When processes open a new file at the same moment, the
        switch can fail at once with "locked" (SQLite does not wait there): retry a while."""
        deadline = _time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(conn)
                # Files an older retl created 0644 (the -wal/-shm files follow the database's mode).
                make_private(*self._files())
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or _time.monotonic() >= deadline:
                    raise
                _time.sleep(0.02)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = self._version(conn)
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = self._version(conn)  # another process may have migrated meanwhile
            self._check_not_newer(version)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
        version = int(row[0]) if row else 0
        self._check_not_newer(version)
        return version

    def _files(self) -> tuple[Path, Path, Path]:
        return (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        )

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer retl (schema version {version}, "
                f"this retl knows {SCHEMA_VERSION})",
                hint="upgrade retl, or move the file aside to start a new run log",
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                hint = (
                    f"another retl process kept the file busy for over {BUSY_TIMEOUT_S:.0f} s; "
                    "try again"
                )
            elif "not a database" in text or "malformed" in text:
                hint = (
                    f"the file is damaged: restore it from a backup, or move it aside (mv "
                    f"{self.path} {self.path}.damaged) and retl starts a new one (it holds run "
                    "history and the dead letter queue, not the sync state)"
                )
            else:
                hint = None
            raise StateError(f"cannot use {self.path}: {text}", hint=hint) from exc
        except OSError as exc:
            raise StateError(f"cannot use {self.path}: {exc}") from exc
