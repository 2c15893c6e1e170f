"""The dead letter queue: records the destination rejected, kept with its error until a run
delivers them or the queue is cleared. Shares `.retl/retl.db` with the run log.

Error texts are redacted before they are stored, otherwise kept as the destination wrote them
(they may quote a value: "invalid email foo@bar"). Record values are stored as the engine mapped
them (customer data: the file is private, 0600), unless the sync's `dead_letters: {values:
false}` says to keep none: the record is then stored as JSON `null` (`DeadLetter.record` None),
and `retl dlq retry` re-reads the rows from the source by key, as it always does.
"""

from __future__ import annotations

import base64
import builtins
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path, PurePath
from typing import Any
from uuid import UUID

from reverse_etl.errors import StateError
from reverse_etl.redact import redact
from reverse_etl.state.database import (
    Database,
    StateDatabase,
    parse_timestamp,
    select_by_sync,
    timestamp_text,
    utc_now,
)


@dataclass(frozen=True)
class DeadLetterEntry:
    """A record the destination rejected, as the engine hands it to the queue.

    `record` is the mapped record as it would have been sent (JSON-serialisable or convertible:
    datetimes, decimals, bytes, UUIDs... are stored as strings); None when the sync keeps no
    values in its dead letters (`dead_letters: {values: false}`).
    """

    key: str
    operation: str  # create | update | delete (the plan's operation)
    record: Mapping[str, Any] | None
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """A queued rejection: the last failure of one key of one sync, and how often it failed."""

    sync: str
    key: str
    operation: str
    record: dict[str, Any] | None  # None: its values were not kept (`dead_letters.values`)
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
            "values_kept": self.record is not None,
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


def record_json(record: Mapping[str, Any] | None) -> str:
    """Serialise a record for storage; never fails, whatever the values (falls back to str).
    None (values not kept) is stored as `null`."""
    if record is None:
        return "null"
    try:
        return json.dumps(record, default=_json_default, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_plain(record), ensure_ascii=False)


_DLQ_COLUMNS = (
    "sync, key, operation, record, error, run_id, first_failed_at, last_failed_at, attempts"
)


def _dead_letter_from_row(row: tuple[Any, ...]) -> DeadLetter:
    sync, key, operation, record, error, run_id, first, last, attempts = row
    first_failed_at, last_failed_at = parse_timestamp(first), parse_timestamp(last)
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

    def __init__(self, database: str | Path | StateDatabase) -> None:
        self._db = Database(database) if isinstance(database, str | Path) else database

    @property
    def name(self) -> str:
        """Where the queue is, as messages name it."""
        return self._db.name

    def add(self, sync: str, run_id: str | None, entries: Iterable[DeadLetterEntry]) -> int:
        """Queue rejections in one transaction; returns how many keys were written.

        A key already queued keeps its `first_failed_at`, takes the new operation, record and
        error, and counts one more attempt. A key repeated within `entries` counts once (the last
        entry wins).
        """
        now = timestamp_text(utc_now())
        latest: dict[str, DeadLetterEntry] = {}
        for entry in entries:
            if not isinstance(entry.key, str):
                raise StateError(f"dead letter key must be str, not {type(entry.key).__name__}")
            latest[entry.key] = entry
        rows = [
            (sync, e.key, e.operation, record_json(e.record), redact(e.error), run_id, now, now)
            for e in latest.values()
        ]
        if not rows:
            return 0
        with self._db.write() as conn:
            conn.executemany(
                f"INSERT INTO dead_letters ({_DLQ_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (sync, key) DO UPDATE SET operation = excluded.operation, "
                "record = excluded.record, error = excluded.error, run_id = excluded.run_id, "
                "last_failed_at = excluded.last_failed_at, attempts = dead_letters.attempts + 1",
                rows,
            )
        return len(rows)

    def forget_values(self, sync: str) -> int:
        """Drop the stored values of every queued record of `sync` (keys, operations and errors
        stay): what a sync that keeps no values does with letters queued before it said so.
        Returns how many records lost their values."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE dead_letters SET record = 'null' WHERE sync = ? AND record <> 'null'",
                (sync,),
            )
            return max(cursor.rowcount, 0)

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
        sql, params = select_by_sync(
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

    def top_errors(self, sync: str, limit: int = 5) -> builtins.list[tuple[str, int]]:
        """The most frequent errors of a sync's queued keys, with how many keys each."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT error, count(*) AS n FROM dead_letters WHERE sync = ? GROUP BY error "
                "ORDER BY n DESC, error LIMIT ?",
                (sync, limit),
            )
            return [(str(error), int(n)) for error, n in rows]

    def keys(self, sync: str) -> builtins.list[str]:
        """The queued keys of `sync`, sorted (e.g. to re-read them on the next run)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT key FROM dead_letters WHERE sync = ? ORDER BY key", (sync,))
            return [key for (key,) in rows]

    def clear(self, sync: str) -> int:
        """Drop every entry of `sync`; returns how many there were."""
        with self._db.write() as conn:
            return conn.execute("DELETE FROM dead_letters WHERE sync = ?", (sync,)).rowcount
