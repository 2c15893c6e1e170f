"""The shared state store: the run log, dead letters, records in doubt, pauses and run locks in a
schema of a PostgreSQL database (`state.backend: postgres`, or `warehouse` on PostgreSQL), so
that every machine running a project sees the same runs and locks (state/store.py).

The tables are those of `.retl/retl.db` (state/database.py), timestamps kept as the same text,
so RunLog & co. run the same queries here (`?` placeholders become `%s`). The schema carries its
own version (`store_meta`) and migrates forward under a transaction-level advisory lock, so two
machines starting at once migrate it once.

A run's lock is two things (SPEC 6.3): a session advisory lock on a connection held for the
run, which the server releases when that connection dies (a killed run never blocks the next
one, on any machine), and a lease row in `retl_locks` whose `token` grows with every holder; the
run keeps its token as a `Fence` that every acknowledgement checks, so a run whose lease was
cleared (`retl unlock`) commits nothing more.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from reverse_etl.errors import StateError, StateLockedError
from reverse_etl.mapping.compile import quote_identifier
from reverse_etl.redact import redact, register_url
from reverse_etl.state.database import Dialect, StateConnection, StateCursor
from reverse_etl.state.fence import LOCKS_TABLE, Fence
from reverse_etl.state.lock import LockInfo, _check_sync_name, _current_command, _current_user
from reverse_etl.state.store import StateStore, StoreKind
from reverse_etl.warehouse.base import database_message

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
VERSION_TABLE = "store_meta"
CONNECT_TIMEOUT_S = 10
# Idle connections kept for the next operation (a connection costs milliseconds to open; a
# run writes its progress every second and its dead letters and records in doubt per batch).
_POOL_SIZE = 4

# How long `lock_holder` waits for the lease row of a run that has just taken its lock.
_LEASE_WRITE_SECONDS = 1.0
# The `command` of a lease row `retl unlock` cleared (a released lease has none).
_UNLOCKED = "(cleared by retl unlock)"
_INSUFFICIENT_PRIVILEGE = "42501"
_UNDEFINED_TABLE = "42P01"
_CREATED_MEANWHILE = ("42P06", "42P07", "23505")  # duplicate schema / table, unique violation

# The server closed the connection or is going away (terminated by an administrator, shutting
# down, in recovery): the store was lost, not a statement refused.
_CONNECTION_LOST = ("57P01", "57P02", "57P03")

_TEXT = 'TEXT COLLATE "C"'  # byte order, as SQLite sorts: text timestamps sort as time

# Statements that take the schema from version N-1 to N, `{s}` the quoted schema. Append;
# never edit a released entry. Version 1 is `.retl/retl.db` at its version 4, plus the leases.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        f"""
        CREATE TABLE {{s}}.runs (
            id            {_TEXT} PRIMARY KEY,
            sync          {_TEXT} NOT NULL,
            status        {_TEXT} NOT NULL,
            trigger       {_TEXT} NOT NULL,
            started_at    {_TEXT} NOT NULL,
            finished_at   {_TEXT},
            git_commit    TEXT,
            git_dirty     INTEGER NOT NULL DEFAULT 0,
            config_hash   TEXT,
            counts        TEXT NOT NULL DEFAULT '{{{{}}}}',
            error         TEXT,
            message       TEXT,
            planned       TEXT NOT NULL DEFAULT '{{{{}}}}',
            state_records BIGINT
        )
        """,
        "CREATE INDEX runs_by_sync ON {s}.runs (sync, started_at)",
        "CREATE INDEX runs_by_start ON {s}.runs (started_at)",
        f"""
        CREATE TABLE {{s}}.dead_letters (
            sync            {_TEXT} NOT NULL,
            key             {_TEXT} NOT NULL,
            operation       TEXT NOT NULL,
            record          TEXT NOT NULL,
            error           {_TEXT} NOT NULL,
            run_id          TEXT,
            first_failed_at {_TEXT} NOT NULL,
            last_failed_at  {_TEXT} NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 1,
            PRIMARY KEY (sync, key)
        )
        """,
        f"""
        CREATE TABLE {{s}}.pauses (
            sync       {_TEXT} PRIMARY KEY,
            paused_by  TEXT NOT NULL,
            paused_at  {_TEXT} NOT NULL,
            reason     TEXT NOT NULL
        )
        """,
        f"""
        CREATE TABLE {{s}}.in_doubt (
            sync       {_TEXT} NOT NULL,
            key        {_TEXT} NOT NULL,
            operation  TEXT NOT NULL,
            reason     TEXT NOT NULL,
            run_id     TEXT,
            since      {_TEXT} NOT NULL,
            PRIMARY KEY (sync, key)
        )
        """,
        # A row per sync that ever ran here; its holder columns are NULL while nobody holds it.
        # Rows are never deleted: `token` only grows, so an old token never becomes current.
        f"""
        CREATE TABLE {{s}}.{LOCKS_TABLE} (
            sync         {_TEXT} PRIMARY KEY,
            token        BIGINT NOT NULL,
            host         TEXT,
            pid          INTEGER,
            "user"       TEXT,
            started_at   TIMESTAMPTZ,
            command      TEXT,
            heartbeat_at TIMESTAMPTZ
        )
        """,
    ),
}


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """A statement written for sqlite3 (`?` placeholders) as psycopg takes it. retl's state
    statements hold no `?` nor `%` inside a literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def _advisory_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for these parts (stable across machines)."""
    digest = hashlib.sha256("\0".join(("retl", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _Connection:
    """A psycopg connection with the sqlite3 call shape RunLog & co. use."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> StateCursor:
        return self._conn.execute(_pg_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> StateCursor:
        cursor = self._conn.cursor()
        cursor.executemany(_pg_sql(sql), [tuple(row) for row in parameters])
        return cursor


class PostgresDatabase:
    """The state tables in `schema` of the PostgreSQL database at `url`: a `StateDatabase`.

    Connections are pooled (a few idle ones are kept) and safe to use from several threads,
    one operation per connection at a time. The schema is created and migrated on first use.
    """

    dialect: Dialect = "postgres"

    def __init__(self, url: str, schema: str, name: str) -> None:
        register_url(url)
        scheme, _, rest = url.partition("://")
        self._conninfo = f"{scheme.split('+', 1)[0]}://{rest}"
        self.schema = schema
        self.name = name
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False

    @property
    def quoted_schema(self) -> str:
        return quote_identifier(self.schema)

    # ------------------------------------------------------------------------ connections

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection of its own (autocommit), its search path on the schema; raises
        StateError, with no password, when the store cannot be reached."""
        import psycopg

        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"retl {socket.gethostname()} {os.getpid()}"[:63],
            )
        except psycopg.Error as exc:
            raise StateError(
                f"cannot reach the state store ({self.name}): {database_message(exc)}",
                hint="nothing was sent; check that the server answers and state.url (or the "
                "state warehouse's url) in retl.yml, then run again",
            ) from None
        try:
            conn.execute(
                "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false)",
                (self.quoted_schema,),
            )
        except psycopg.Error as exc:
            conn.close()
            raise self.error(exc, "prepare a connection to") from None
        return conn

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._closed:
                raise StateError(f"the state store ({self.name}) is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken and not _spoken(conn):
                    return conn
                conn.close()
        return self.connect()

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg.pq import TransactionStatus

        reusable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if reusable:
            with self._lock:
                if not self._closed and len(self._idle) < _POOL_SIZE:
                    self._idle.append(conn)
                    return
        conn.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        self.ensure_schema()
        conn = self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    @contextmanager
    def read(self) -> Iterator[StateConnection]:
        """A connection for queries (each statement sees what is committed when it starts).
        A store never written reads as empty and is not created (a plan creates nothing)."""
        import psycopg

        if not self._ready and not self._exists():
            with self._empty() as conn:
                try:
                    yield _Connection(conn)
                except psycopg.Error as exc:
                    raise self.error(exc, "read") from None
            return
        with self._connection() as conn:
            try:
                yield _Connection(conn)
            except psycopg.Error as exc:
                raise self.error(exc, "read") from None

    def _exists(self) -> bool:
        """Whether the schema's tables exist (an older version is migrated on this read)."""
        import psycopg

        conn = self._take()
        try:
            return self._version(conn) > 0
        except psycopg.Error as exc:
            raise self.error(exc, "read") from None
        finally:
            self._give(conn)

    @contextmanager
    def _empty(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own that sees the tables empty: temporary ones, gone with it."""
        import psycopg

        conn = self.connect()
        try:
            conn.execute("SELECT set_config('search_path', 'pg_temp', false)")
            for target in range(1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement.format(s="pg_temp").encode())
            yield conn
        except psycopg.Error as exc:
            raise self.error(exc, "read") from None
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[StateConnection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
        import psycopg

        with self._connection() as conn:
            try:
                with conn.transaction():
                    yield _Connection(conn)
            except psycopg.Error as exc:
                raise self.error(exc, "write") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    # ----------------------------------------------------------------------------- errors

    def error(self, exc: psycopg.Error, what: str) -> StateError:
        """A database error as a StateError: a missing privilege shows the GRANT to run."""
        import psycopg

        message = database_message(exc)
        if isinstance(exc, psycopg.OperationalError) and connection_lost(exc.sqlstate):
            return StateError(
                f"lost the state store ({self.name}) while trying to {what} it: {message}",
                hint="check that the server answers, then run again: what a run sent is "
                "recognised (delivery markers, look-ups) or re-sent idempotently",
            )
        if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
            schema = self.quoted_schema
            return StateError(
                f"cannot {what} the state store ({self.name}): {message}",
                hint="retl needs create/write rights only in its own schema; as an "
                f"administrator run: GRANT USAGE ON SCHEMA {schema} TO {self._user()}; GRANT "
                f"SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO "
                f"{self._user()};",
            )
        return StateError(f"cannot {what} the state store ({self.name}): {message}")

    def _user(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        with contextlib.suppress(Exception):
            user = conninfo_to_dict(self._conninfo).get("user")
            if user:
                return quote_identifier(str(user))
        return "<retl user>"

    # -------------------------------------------------------------------------- migration

    def ensure_schema(self) -> None:
        """Create or migrate the schema once per process; refuse a newer one."""
        if self._ready:
            return
        import psycopg

        conn = self._take()
        try:
            if self._version(conn) != SCHEMA_VERSION:
                self._migrate(conn)
            self._ready = True
        except psycopg.Error as exc:
            if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
                raise self._grant_error(
                    exc,
                    f"cannot use the state schema {self.schema}",
                    f"GRANT USAGE, CREATE ON SCHEMA {self.quoted_schema} TO {self._user()};",
                ) from None
            raise self.error(exc, "prepare") from None
        finally:
            self._give(conn)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        import psycopg

        try:
            row = conn.execute(
                f"SELECT value FROM {self.quoted_schema}.{VERSION_TABLE} "
                "WHERE key = 'schema_version'"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        version = int(row[0]) if row else 0
        self._check_not_newer(version)
        return version

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        schema = self.quoted_schema
        with conn.transaction():
            # Two machines starting at once: the second waits here, then finds it current.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (_advisory_key("migrate", self.schema),)
            )
            if not conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone():
                try:
                    with conn.transaction():
                        conn.execute(f"CREATE SCHEMA {schema}")
                except psycopg.Error as exc:
                    if exc.sqlstate not in _CREATED_MEANWHILE:
                        raise self._grant_error(
                            exc,
                            f"cannot create the state schema {self.schema}",
                            f"CREATE SCHEMA {schema} AUTHORIZATION {self._user()};",
                        ) from None
            try:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {schema}.{VERSION_TABLE} "
                    "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                version = self._version(conn)
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        conn.execute(statement.format(s=schema).encode())
                conn.execute(
                    f"INSERT INTO {schema}.{VERSION_TABLE} (key, value) "
                    "VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
            except psycopg.Error as exc:
                raise self._grant_error(
                    exc,
                    f"cannot create the state tables in schema {self.schema}",
                    f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {self._user()};",
                ) from None

    def _grant_error(self, exc: psycopg.Error, what: str, statement: str) -> StateError:
        message = database_message(exc).splitlines()[0]
        if exc.sqlstate == _INSUFFICIENT_PRIVILEGE:
            return StateError(
                f"{what} ({self.name}): {message}",
                hint="retl needs create/write rights only in its own schema; as an "
                f"administrator run: {statement}",
            )
        return StateError(f"{what} ({self.name}): {message}")

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state store ({self.name}) was written by a newer retl (schema version "
                f"{version}, this retl knows {SCHEMA_VERSION})",
                hint="upgrade retl on this machine to the version the other machines run",
            )


class PostgresLease:
    """A run's lock of one sync in the shared store (see the module docstring)."""

    def __init__(self, store: PostgresStore, sync: str, command: str | None = None) -> None:
        _check_sync_name(sync)
        self.store = store
        self.sync = sync
        self.command = command if command is not None else _current_command()
        self.info: LockInfo | None = None
        self.fence: Fence | None = None
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def held(self) -> bool:
        return self.info is not None

    def acquire(self) -> LockInfo:
        """Take the advisory lock and the lease; raises StateLockedError naming the holder."""
        import psycopg

        if self._conn is not None:
            raise StateError(f"the lock of sync '{self.sync}' is already held by this lease")
        database = self.store.database()
        database.ensure_schema()
        conn = database.connect()
        try:
            key = self.store.lock_key(self.sync)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):
                raise self.store.locked_error(self.sync)
            info = LockInfo(
                sync=self.sync,
                pid=os.getpid(),
                host=socket.gethostname(),
                user=_current_user(),
                started_at=datetime.now(UTC).replace(microsecond=0),
                command=self.command,
            )
            with conn.transaction():
                token_row = conn.execute(
                    f"INSERT INTO {LOCKS_TABLE} AS l "
                    '(sync, token, host, pid, "user", started_at, command, heartbeat_at) '
                    "VALUES (%s, 1, %s, %s, %s, %s, %s, now()) ON CONFLICT (sync) DO UPDATE SET "
                    "token = l.token + 1, host = excluded.host, pid = excluded.pid, "
                    '"user" = excluded."user", started_at = excluded.started_at, '
                    "command = excluded.command, heartbeat_at = excluded.heartbeat_at "
                    "RETURNING token",
                    (
                        info.sync,
                        info.host,
                        info.pid,
                        info.user,
                        info.started_at,
                        redact(info.command or ""),
                    ),
                ).fetchone()
            assert token_row is not None
        except psycopg.Error as exc:
            conn.close()
            raise database.error(exc, "take the lock of sync '" + self.sync + "' in") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.info = info
        self.fence = Fence(self.store.schema, self.sync, int(token_row[0]))
        return info

    def release(self) -> None:
        """Clear our lease (when still ours) and let the advisory lock go. Never raises: a
        store that went away released the advisory lock with the connection."""
        conn, fence = self._conn, self.fence
        self._conn, self.info, self.fence = None, None, None
        if conn is None:
            return
        try:
            if fence is not None:
                conn.execute(
                    f'UPDATE {LOCKS_TABLE} SET host = NULL, pid = NULL, "user" = NULL, '
                    "started_at = NULL, command = NULL WHERE sync = %s AND token = %s",
                    (fence.sync, fence.token),
                )
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.store.lock_key(self.sync),))
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> PostgresLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class PostgresStore(StateStore):
    """The run log & co. and the run locks in `schema` of the PostgreSQL database at `url`;
    `warehouse` names the warehouse when the store is `state.backend: warehouse`'s."""

    shared = True

    def __init__(self, url: str, schema: str = "retl_state", warehouse: str | None = None) -> None:
        self.schema = schema
        self.kind: StoreKind = "warehouse" if warehouse else "postgres"
        server = _server(url)
        self.where = (
            f"warehouse '{warehouse}' ({server}), schema {schema}"
            if warehouse
            else f"{server}, schema {schema}"
        )
        self._database = PostgresDatabase(url, schema, self.where)

    def database(self) -> PostgresDatabase:
        return self._database

    def lock(self, sync: str, command: str | None = None) -> PostgresLease:
        return PostgresLease(self, sync, command)

    def lock_key(self, sync: str) -> int:
        return _advisory_key("lock", self.schema, sync)

    def lock_holder(self, sync: str) -> LockInfo | None:
        """The lease's holder while its advisory lock is held; None otherwise (a lease row
        left by a killed run names nobody: the server released its lock)."""
        _check_sync_name(sync)
        # A run takes the advisory lock, then writes its lease row in a transaction of its
        # own: just after, the lock is held and the row names nobody yet. Wait that moment
        # out (a lease cleared by `retl unlock` is marked so and is told at once).
        deadline = time.monotonic() + _LEASE_WRITE_SECONDS
        while True:
            with self._database.read() as conn:
                session = self._holding_session(conn, sync)
                if session is None:
                    return None
                row = conn.execute(
                    f'SELECT host, pid, "user", started_at, command FROM {LOCKS_TABLE} '
                    "WHERE sync = ?",
                    (sync,),
                ).fetchone()
            if row is not None and row[0] is not None:
                host, pid, user, started_at, command = row
                return LockInfo(sync, int(pid), str(host), user, started_at, command)
            unlocked = row is not None and row[4] == _UNLOCKED
            if unlocked or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        backend_pid, address, user, since = session
        return LockInfo(
            sync,
            int(backend_pid),
            f"{address or 'local socket'} (server session)",
            user,
            since or datetime.now(UTC),
            "its lease was cleared by `retl unlock`; it stops at its next acknowledgement"
            if unlocked
            else "a run that is starting: its lease is not written yet",
        )

    def locked_error(self, sync: str) -> StateLockedError:
        holder = self.lock_holder(sync)
        who = holder.describe() if holder is not None else "another run"
        return StateLockedError(
            f"sync '{sync}' is being run by {who} (lock in {self.where})",
            hint=f"wait for it to finish; the server frees the lock at once when that process "
            f"dies. `retl unlock {sync}` stops its acknowledgements (it then records nothing more)",
        )

    def force_unlock(self, sync: str) -> bool:
        """Clear the lease and bump its token: the holder's next acknowledgement fails its
        fence (nothing is terminated). True when the lease named a holder."""
        _check_sync_name(sync)
        with self._database.write() as conn:
            row = conn.execute(
                f"UPDATE {LOCKS_TABLE} AS l SET token = l.token + 1, host = NULL, pid = NULL, "
                '"user" = NULL, started_at = NULL, command = ? FROM (SELECT sync, host FROM '
                f"{LOCKS_TABLE} WHERE sync = ? FOR UPDATE) AS old WHERE l.sync = old.sync "
                "RETURNING old.host",
                (_UNLOCKED, sync),
            ).fetchone()
        return row is not None and row[0] is not None

    def _holding_session(
        self, conn: StateConnection, sync: str
    ) -> tuple[int, str | None, str | None, datetime | None] | None:
        """The server session holding the advisory lock of `sync` (pid, client address, user,
        since), or None."""
        key = self.lock_key(sync) & 0xFFFFFFFFFFFFFFFF
        row = conn.execute(
            "SELECT a.pid, host(a.client_addr), a.usename, a.backend_start FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = CAST(CAST(? AS bigint) AS oid) "
            "AND l.objid = CAST(CAST(? AS bigint) AS oid)",
            (key >> 32, key & 0xFFFFFFFF),
        ).fetchone()
        if row is None:
            return None
        return int(row[0] or 0), row[1], row[2], row[3]

    def close(self) -> None:
        self._database.close()


def _server(url: str) -> str:
    """`postgres 127.0.0.1:5432/test` (never the user nor the password)."""
    from psycopg.conninfo import conninfo_to_dict

    scheme, _, rest = url.partition("://")
    try:
        parts = conninfo_to_dict(f"{scheme.split('+', 1)[0]}://{rest}")
    except Exception:
        return "postgres (unreadable url)"
    host = str(parts.get("host") or "localhost")
    port = parts.get("port")
    database = parts.get("dbname") or ""
    where = f"{host}:{port}" if port else host
    return redact(f"postgres {where}/{database}")


__all__ = ["SCHEMA_VERSION", "PostgresDatabase", "PostgresLease", "PostgresStore"]


def connection_lost(sqlstate: str | None) -> bool:
    """Whether an operational error of the state database (its SQLSTATE, None when the
    connection broke without an answer) means the connection is gone."""
    return sqlstate is None or sqlstate[:2] == "08" or sqlstate in _CONNECTION_LOST


def _spoken(conn: psycopg.Connection[Any]) -> bool:
    """True when the server wrote to an idle connection: it only does so to end it (a
    terminated backend, a restart), so the connection is stale. A zero-timeout poll, no round
    trip."""
    import select

    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
