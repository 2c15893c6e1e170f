"""Records in doubt: sent to a destination whose answer did not say whether it applied them
(a lost, short or unreadable answer, or a run killed while the batch was in flight).

A record is written here before its create is sent to a destination that cannot commit a
delivery marker with it, and removed once the answer accounts for it. Whatever is left after a
run, or after a kill, is looked up (by key) or re-sent idempotently by the next run before it is
created again: never counted as delivered, never created twice blind. Shares `.retl/retl.db`
with the run log and the dead letter queue.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reverse_etl.redact import redact
from reverse_etl.state.database import (
    Database,
    StateDatabase,
    json_values,
    parse_timestamp,
    timestamp_text,
    utc_now,
)


@dataclass(frozen=True)
class InDoubt:
    """One record in doubt: its key, the operation sent, why it is in doubt, since when."""

    sync: str
    key: str
    operation: str
    reason: str
    run_id: str | None
    since: datetime


class InDoubtRecords:
    """The records in doubt of every sync, one entry per (sync, key)."""

    def __init__(self, database: str | Path | StateDatabase) -> None:
        self._db = Database(database) if isinstance(database, str | Path) else database

    def add(
        self, sync: str, run_id: str | None, operation: str, keys: Iterable[str], reason: str
    ) -> None:
        """Mark `keys` in doubt (a key already in doubt takes the new reason and run)."""
        listed = json.dumps(list(keys))
        if listed == "[]":
            return
        # One statement over a JSON array: a run writes a batch's keys here before sending it.
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO in_doubt (sync, key, operation, reason, run_id, since) "
                f"SELECT ?, value, ?, ?, ?, ? FROM {json_values(self._db.dialect)} WHERE true "
                "ON CONFLICT (sync, key) DO UPDATE SET "
                "operation = excluded.operation, reason = excluded.reason, "
                "run_id = excluded.run_id",
                (sync, operation, redact(reason), run_id, timestamp_text(utc_now()), listed),
            )

    def remove(self, sync: str, keys: Iterable[str]) -> None:
        """The answer accounted for these keys: they are no longer in doubt."""
        listed = json.dumps(list(keys))
        if listed != "[]":
            with self._db.write() as conn:
                conn.execute(
                    "DELETE FROM in_doubt WHERE sync = ? AND key IN "
                    f"(SELECT value FROM {json_values(self._db.dialect)})",
                    (sync, listed),
                )

    def keys(self, sync: str) -> set[str]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT key FROM in_doubt WHERE sync = ?", (sync,))
            return {key for (key,) in rows}

    def count(self, sync: str) -> int:
        with self._db.read() as conn:
            row = conn.execute("SELECT count(*) FROM in_doubt WHERE sync = ?", (sync,)).fetchone()
        return int(row[0])

    def list(self, sync: str, limit: int | None = None) -> builtins.list[InDoubt]:
        sql = (
            "SELECT sync, key, operation, reason, run_id, since FROM in_doubt WHERE sync = ? "
            "ORDER BY since, key"
        )
        params: tuple[object, ...] = (sync,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (sync, limit)
        with self._db.read() as conn:
            result = []
            for sync_, key, operation, reason, run_id, since in conn.execute(sql, params):
                when = parse_timestamp(since)
                assert when is not None
                result.append(InDoubt(sync_, key, operation, reason, run_id, when))
            return result

    def clear(self, sync: str) -> int:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM in_doubt WHERE sync = ?", (sync,)).rowcount
