"""The run log and the dead letter queue: one SQLite file, `.retl/retl.db`.

SQLite in WAL mode rather than DuckDB because several processes use the file at once: `retl status`
reads while a run writes, and runs of two different syncs write side by side (a DuckDB file admits
one process only). Writers wait for each other up to `BUSY_TIMEOUT_S` instead of failing.

Nothing here filters secrets: it stores exactly what it is given. Callers pass no credentials in
errors, messages or records (the engine redacts before it records).
"""

from __future__ import annotations

import base64
import builtins
import json
import math
import secrets
import sqlite3
import time as _time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, Literal, get_args
from uuid import UUID

from reverse_etl.errors import StateError, UsageError

RunStatus = Literal["running", "success", "failed", "interrupted", "refused", "skipped"]
RunTrigger = Literal["manual", "schedule", "dlq_retry"]

RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
RUN_TRIGGERS: frozenset[str] = frozenset(get_args(RunTrigger))
INTERRUPTED_ERROR = "interrupted (process ended before the run finished)"

SCHEMA_VERSION = 1
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
}


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (the only kind stored here)."""
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    # Fixed width, always UTC, so that text order is time order in SQL.
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC datetime")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class _Database:
    """Opens short-lived connections to the shared file and keeps its schema current.

    A connection per operation keeps the objects safe to share between threads and holds no file
    handle between operations.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not self._ready:
                self._prepare(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL and migrate. When processes open a new file at the same moment, the
        switch can fail at once with "locked" (SQLite does not wait there): retry a while."""
        deadline = _time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(conn)
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
                    "the file is damaged: move it aside and retl starts a new one (it holds run "
                    "history and the dead letter queue, not the sync state)"
                )
            else:
                hint = None
            raise StateError(f"cannot use {self.path}: {text}", hint=hint) from exc
        except OSError as exc:
            raise StateError(f"cannot use {self.path}: {exc}") from exc


# --------------------------------------------------------------------------------------- run log


@dataclass(frozen=True)
class RunRecord:
    """One run of one sync as the run log holds it.

    `finished_at` is None while the run is `running` and for a run that was interrupted (its end
    is unknown). `message` is a note for skipped and refused runs; `error` says why a run failed.
    """

    id: str
    sync: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    trigger: RunTrigger
    git_commit: str | None
    git_dirty: bool
    config_hash: str | None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    message: str | None = None

    @property
    def duration(self) -> timedelta | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 strings), the shape `--json` prints."""
        return {
            "id": self.id,
            "sync": self.sync,
            "status": self.status,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "config_hash": self.config_hash,
            "counts": dict(self.counts),
            "error": self.error,
            "message": self.message,
        }


_RUN_COLUMNS = (
    "id, sync, status, trigger, started_at, finished_at, git_commit, git_dirty, config_hash, "
    "counts, error, message"
)


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    (id_, sync, status, trigger, started, finished, commit, dirty, chash, counts, error, msg) = row
    started_at = _parse_ts(started)
    assert started_at is not None
    return RunRecord(
        id=id_,
        sync=sync,
        status=status,
        trigger=trigger,
        started_at=started_at,
        finished_at=_parse_ts(finished),
        git_commit=commit,
        git_dirty=bool(dirty),
        config_hash=chash,
        counts=json.loads(counts),
        error=error,
        message=msg,
    )


def new_run_id(at: datetime | None = None) -> str:
    """A sortable unique run id: UTC start second plus 6 random hex digits."""
    moment = (at or utc_now()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _check_status(status: str, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if status not in allowed:
        raise ValueError(f"status {status!r} is not one of {', '.join(allowed)}")


def _check_trigger(trigger: str) -> None:
    if trigger not in RUN_TRIGGERS:
        raise ValueError(f"trigger {trigger!r} is not one of {', '.join(sorted(RUN_TRIGGERS))}")


def _counts_json(counts: Mapping[str, int] | None) -> str:
    return json.dumps({str(k): int(v) for k, v in (counts or {}).items()}, sort_keys=True)


def _select_by_sync(
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


class RunLog:
    """The history of runs, newest first. Safe to use from several processes and threads."""

    def __init__(self, path: str | Path) -> None:
        self._db = _Database(path)

    @property
    def path(self) -> Path:
        return self._db.path

    def start(
        self,
        sync: str,
        config_hash: str | None,
        git_commit: str | None,
        git_dirty: bool,
        trigger: RunTrigger = "manual",
    ) -> RunRecord:
        """Record that a run of `sync` begins now; returns it with status `running`."""
        _check_trigger(trigger)
        return self._insert(
            sync,
            "running",
            started_at=utc_now(),
            finished_at=None,
            trigger=trigger,
            git_commit=git_commit,
            git_dirty=git_dirty,
            config_hash=config_hash,
            counts=None,
            error=None,
            message=None,
        )

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        counts: Mapping[str, int],
        error: str | None = None,
        message: str | None = None,
    ) -> RunRecord:
        """Close a started run with its outcome and counts by operation; returns the result."""
        _check_status(status, RUN_STATUSES - {"running"})
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, counts = ?, error = ?, "
                "message = COALESCE(?, message) WHERE id = ?",
                (status, _ts(utc_now()), _counts_json(counts), error, message, run_id),
            )
            if cursor.rowcount == 0:
                raise StateError(f"run '{run_id}' is not in the run log {self.path}")
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(row.fetchone())

    def record(
        self,
        sync: str,
        status: RunStatus,
        *,
        message: str | None = None,
        error: str | None = None,
        config_hash: str | None = None,
        git_commit: str | None = None,
        git_dirty: bool = False,
        trigger: RunTrigger = "manual",
        counts: Mapping[str, int] | None = None,
    ) -> RunRecord:
        """Record a run that ended before it started (skipped: paused or not due; refused: lock
        held, delete limit, role). It starts and finishes now."""
        _check_status(status, RUN_STATUSES - {"running"})
        _check_trigger(trigger)
        now = utc_now()
        return self._insert(
            sync,
            status,
            started_at=now,
            finished_at=now,
            trigger=trigger,
            git_commit=git_commit,
            git_dirty=git_dirty,
            config_hash=config_hash,
            counts=counts,
            error=error,
            message=message,
        )

    def get(self, run_id: str) -> RunRecord | None:
        """The run with this id or unique id prefix; None when none matches.

        Raises UsageError when the prefix matches several runs (the hint lists some of them).
        """
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            exact = row.fetchone()
            if exact is not None:
                return _run_from_row(exact)
            if not run_id:
                return None
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 6",
                (len(run_id), run_id),
            ).fetchall()
        if len(rows) == 1:
            return _run_from_row(rows[0])
        if not rows:
            return None
        shown = ", ".join(r[0] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise UsageError(
            f"run id prefix '{run_id}' matches more than one run",
            hint=f"give more of the id: {shown}",
        )

    def list(self, sync: str | None = None, limit: int | None = 20) -> builtins.list[RunRecord]:
        """Runs newest first, of one sync or of all; `limit=None` for all of them."""
        sql, params = _select_by_sync(
            f"SELECT {_RUN_COLUMNS} FROM runs", sync, "started_at DESC, id DESC", limit
        )
        with self._db.read() as conn:
            return [_run_from_row(row) for row in conn.execute(sql, params)]

    def last(self, sync: str) -> RunRecord | None:
        """The newest run of `sync`, whatever its status."""
        runs = self.list(sync, limit=1)
        return runs[0] if runs else None

    def last_success(self, sync: str) -> RunRecord | None:
        """The newest successful run of `sync`."""
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE sync = ? AND status = 'success' "
                "ORDER BY started_at DESC, id DESC LIMIT 1",
                (sync,),
            ).fetchone()
        return None if row is None else _run_from_row(row)

    def mark_abandoned(self, sync: str) -> builtins.list[RunRecord]:
        """Turn runs of `sync` still `running` into `failed` (interrupted); returns them.

        Call only while holding the sync's lock: then no live process can own such a run.
        Their `finished_at` stays None because when they ended is unknown.
        """
        with self._db.write() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM runs WHERE sync = ? AND status = 'running'", (sync,)
                )
            ]
            if not ids:
                return []
            conn.executemany(
                "UPDATE runs SET status = 'failed', error = ? WHERE id = ?",
                [(INTERRUPTED_ERROR, run_id) for run_id in ids],
            )
            placeholders = ", ".join("?" for _ in ids)
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN ({placeholders}) "
                "ORDER BY started_at, id",
                ids,
            ).fetchall()
        return [_run_from_row(row) for row in rows]

    def _insert(
        self,
        sync: str,
        status: RunStatus,
        *,
        started_at: datetime,
        finished_at: datetime | None,
        trigger: RunTrigger,
        git_commit: str | None,
        git_dirty: bool,
        config_hash: str | None,
        counts: Mapping[str, int] | None,
        error: str | None,
        message: str | None,
    ) -> RunRecord:
        values = (
            sync,
            status,
            trigger,
            _ts(started_at),
            None if finished_at is None else _ts(finished_at),
            git_commit,
            int(bool(git_dirty)),
            config_hash,
            _counts_json(counts),
            error,
            message,
        )
        with self._db.write() as conn:
            for _attempt in range(5):
                run_id = new_run_id(started_at)
                try:
                    conn.execute(
                        f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?{', ?' * 11})",
                        (run_id, *values),
                    )
                    break
                except sqlite3.IntegrityError:  # same second and same random suffix
                    continue
            else:
                raise StateError("could not allocate a unique run id")
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(row.fetchone())


# ---------------------------------------------------------------------------- dead letter queue


@dataclass(frozen=True)
class DeadLetterEntry:
    """A record the destination rejected, as the engine hands it to the queue.

    `record` is the mapped record as it would have been sent (JSON-serialisable or convertible:
    datetimes, decimals, bytes, UUIDs... are stored as strings).
    """

    key: str
    operation: str  # create | update | delete (the plan's operation)
    record: Mapping[str, Any]
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """A queued rejection: the last failure of one key of one sync, and how often it failed."""

    sync: str
    key: str
    operation: str
    record: dict[str, Any]
    error: str
    run_id: str | None
    first_failed_at: datetime
    last_failed_at: datetime
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 strings)."""
        return {
            "sync": self.sync,
            "key": self.key,
            "operation": self.operation,
            "record": self.record,
            "error": self.error,
            "run_id": self.run_id,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
            "attempts": self.attempts,
        }


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # keeps every digit; a float would not
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, UUID | PurePath):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        items = list(value)
        try:
            return sorted(items)
        except TypeError:
            return items
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    as_py = getattr(value, "as_py", None)  # pyarrow scalars
    if callable(as_py):
        return as_py()
    return str(value)


def _plain(value: Any, depth: int = 0) -> Any:
    """`value` as plain JSON types: the slow path for what `json.dumps` alone refuses."""
    if depth > 64:
        return repr(value)
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN/Infinity are not JSON
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    converted = _json_default(value)
    if isinstance(converted, str):
        return converted
    return _plain(converted, depth + 1)


def record_json(record: Mapping[str, Any]) -> str:
    """Serialise a record for storage; never fails, whatever the values (falls back to str)."""
    try:
        return json.dumps(record, default=_json_default, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_plain(record), ensure_ascii=False)


_DLQ_COLUMNS = (
    "sync, key, operation, record, error, run_id, first_failed_at, last_failed_at, attempts"
)


def _dead_letter_from_row(row: tuple[Any, ...]) -> DeadLetter:
    sync, key, operation, record, error, run_id, first, last, attempts = row
    first_failed_at, last_failed_at = _parse_ts(first), _parse_ts(last)
    assert first_failed_at is not None and last_failed_at is not None
    return DeadLetter(
        sync=sync,
        key=key,
        operation=operation,
        record=json.loads(record),
        error=error,
        run_id=run_id,
        first_failed_at=first_failed_at,
        last_failed_at=last_failed_at,
        attempts=attempts,
    )


class DeadLetterQueue:
    """Records the destination rejected, one entry per (sync, key), kept until a run delivers
    the key or the queue is cleared. Shares the run log's file."""

    def __init__(self, path: str | Path) -> None:
        self._db = _Database(path)

    @property
    def path(self) -> Path:
        return self._db.path

    def add(self, sync: str, run_id: str | None, entries: Iterable[DeadLetterEntry]) -> int:
        """Queue rejections in one transaction; returns how many keys were written.

        A key already queued keeps its `first_failed_at`, takes the new operation, record and
        error, and counts one more attempt. A key repeated within `entries` counts once (the last
        entry wins).
        """
        now = _ts(utc_now())
        latest: dict[str, DeadLetterEntry] = {}
        for entry in entries:
            if not isinstance(entry.key, str):
                raise TypeError(f"dead letter key must be str, not {type(entry.key).__name__}")
            latest[entry.key] = entry
        rows = [
            (sync, e.key, e.operation, record_json(e.record), e.error, run_id, now, now)
            for e in latest.values()
        ]
        if not rows:
            return 0
        with self._db.write() as conn:
            conn.executemany(
                f"INSERT INTO dead_letters ({_DLQ_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (sync, key) DO UPDATE SET operation = excluded.operation, "
                "record = excluded.record, error = excluded.error, run_id = excluded.run_id, "
                "last_failed_at = excluded.last_failed_at, attempts = attempts + 1",
                rows,
            )
        return len(rows)

    def remove(self, sync: str, keys: Iterable[str]) -> int:
        """Drop these keys of `sync` (delivered since); returns how many were queued."""
        rows = [(sync, key) for key in keys]
        if not rows:
            return 0
        with self._db.write() as conn:
            cursor = conn.executemany("DELETE FROM dead_letters WHERE sync = ? AND key = ?", rows)
            return max(cursor.rowcount, 0)

    def list(self, sync: str | None = None, limit: int | None = None) -> builtins.list[DeadLetter]:
        """Queued entries, oldest failure first, of one sync or of all."""
        sql, params = _select_by_sync(
            f"SELECT {_DLQ_COLUMNS} FROM dead_letters", sync, "sync, first_failed_at, key", limit
        )
        with self._db.read() as conn:
            return [_dead_letter_from_row(row) for row in conn.execute(sql, params)]

    def count(self, sync: str | None = None) -> int:
        """How many keys are queued, for one sync or in all."""
        with self._db.read() as conn:
            if sync is None:
                row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM dead_letters WHERE sync = ?", (sync,)
                ).fetchone()
        return int(row[0])

    def counts_by_sync(self) -> dict[str, int]:
        """Queued keys per sync; syncs with none are absent."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sync, count(*) FROM dead_letters GROUP BY sync ORDER BY sync"
            )
            return {sync: int(n) for sync, n in rows}

    def keys(self, sync: str) -> builtins.list[str]:
        """The queued keys of `sync`, sorted (e.g. to re-read them on the next run)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT key FROM dead_letters WHERE sync = ? ORDER BY key", (sync,))
            return [key for (key,) in rows]

    def clear(self, sync: str) -> int:
        """Drop every entry of `sync`; returns how many there were."""
        with self._db.write() as conn:
            return conn.execute("DELETE FROM dead_letters WHERE sync = ?", (sync,)).rowcount
