"""The run log: every run of every sync, in `.retl/retl.db` (see state/database.py) or the shared
state store (state/postgres.py): the same queries over either (state/store.py).

Every text recorded (errors, messages) is redacted first: the run log never holds a secret.
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from reverse_etl.errors import StateError, UsageError
from reverse_etl.redact import redact
from reverse_etl.state.database import (
    Database,
    StateDatabase,
    json_integer,
    parse_timestamp,
    select_by_sync,
    timestamp_text,
    utc_now,
)

RunStatus = Literal["running", "success", "failed", "interrupted", "refused", "skipped"]
RunTrigger = Literal["manual", "schedule", "dlq_retry"]

RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))
RUN_TRIGGERS: frozenset[str] = frozenset(get_args(RunTrigger))
INTERRUPTED_ERROR = (
    "interrupted (process ended before the run finished); the counts are what the destination "
    "had acknowledged when it was last recorded"
)


@dataclass(frozen=True)
class RunRecord:
    """One run of one sync as the run log holds it.

    `finished_at` is None while the run is `running` and for a run that was interrupted (its end
    is unknown). `message` is a note for skipped and refused runs; `error` says why a run failed.
    `counts` are what the destination applied; `planned` what the plan meant to do, kept apart so
    that a refused run never reads as if its planned deletes were sent.
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
    planned: dict[str, int] = field(default_factory=dict)
    # Records in the sync's snapshot when the run ended (None: unknown, or before retl 0.3).
    state_records: int | None = None

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
            "planned": dict(self.planned),
            "error": self.error,
            "message": self.message,
            "state_records": self.state_records,
        }


_RUN_COLUMNS = (
    "id, sync, status, trigger, started_at, finished_at, git_commit, git_dirty, config_hash, "
    "counts, error, message, planned, state_records"
)


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    (
        id_,
        sync,
        status,
        trigger,
        started,
        finished,
        commit,
        dirty,
        chash,
        counts,
        error,
        msg,
        planned,
        state_records,
    ) = row
    started_at = parse_timestamp(started)
    assert started_at is not None
    return RunRecord(
        id=id_,
        sync=sync,
        status=status,
        trigger=trigger,
        started_at=started_at,
        finished_at=parse_timestamp(finished),
        git_commit=commit,
        git_dirty=bool(dirty),
        config_hash=chash,
        counts=json.loads(counts),
        error=error,
        message=msg,
        planned=json.loads(planned),
        state_records=state_records,
    )


def new_run_id(at: datetime | None = None) -> str:
    """A sortable unique run id: UTC start second plus 6 random hex digits."""
    moment = (at or utc_now()).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _check_status(status: str, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if status not in allowed:
        raise StateError(f"run status {status!r} is not one of {', '.join(allowed)}")


def _check_trigger(trigger: str) -> None:
    if trigger not in RUN_TRIGGERS:
        raise StateError(f"run trigger {trigger!r} is not one of {', '.join(sorted(RUN_TRIGGERS))}")


def _counts_json(counts: Mapping[str, int] | None) -> str:
    return json.dumps({str(k): int(v) for k, v in (counts or {}).items()}, sort_keys=True)


def _text(value: str | None) -> str | None:
    """What the run log stores of an error or message: the text with every secret masked."""
    return None if value is None else redact(value)


class RunLog:
    """The history of runs, newest first. Safe to use from several processes and threads."""

    def __init__(self, database: str | Path | StateDatabase) -> None:
        self._db = Database(database) if isinstance(database, str | Path) else database

    @property
    def name(self) -> str:
        """Where the run log is, as messages name it."""
        return self._db.name

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
            planned=None,
            error=None,
            message=None,
        )

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        counts: Mapping[str, int],
        *,
        planned: Mapping[str, int] | None = None,
        error: str | None = None,
        message: str | None = None,
        state_records: int | None = None,
    ) -> RunRecord:
        """Close a started run with its outcome, the counts the destination applied, the
        counts that were planned and the records its snapshot holds now; returns the result."""
        _check_status(status, RUN_STATUSES - {"running"})
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, counts = ?, planned = ?, error = ?, "
                "message = COALESCE(?, message), state_records = ? WHERE id = ?",
                (
                    status,
                    timestamp_text(utc_now()),
                    _counts_json(counts),
                    _counts_json(planned),
                    _text(error),
                    _text(message),
                    state_records,
                    run_id,
                ),
            )
            if cursor.rowcount == 0:
                raise StateError(f"run '{run_id}' is not in the run log {self.name}")
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(row.fetchone())

    def progress(self, run_id: str, counts: Mapping[str, int]) -> None:
        """What a running run has delivered so far: a run killed before `finish` keeps these
        counts (what the destination acknowledged up to then), not zeros."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE runs SET counts = ? WHERE id = ? AND status = 'running'",
                (_counts_json(counts), run_id),
            )

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
        planned: Mapping[str, int] | None = None,
    ) -> RunRecord:
        """Record a run that ended before it started (skipped: paused or not due; refused: lock
        held, delete limit, role). It starts and finishes now; `counts` are what was applied
        (usually nothing), `planned` what the plan meant to do."""
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
            planned=planned,
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
        sql, params = select_by_sync(
            f"SELECT {_RUN_COLUMNS} FROM runs", sync, "started_at DESC, id DESC", limit
        )
        with self._db.read() as conn:
            return [_run_from_row(row) for row in conn.execute(sql, params)]

    def list_ended(
        self, sync: str, statuses: Iterable[str], limit: int | None = 20
    ) -> builtins.list[RunRecord]:
        """Runs of `sync` with one of these statuses, newest first (the report draws the ones
        that started, not every skip of a paused sync)."""
        wanted = sorted(set(statuses))
        placeholders = ", ".join("?" for _ in wanted)
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE sync = ? AND status IN ({placeholders}) "
            "ORDER BY started_at DESC, id DESC"
        )
        params: builtins.list[Any] = [sync, *wanted]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
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

    def last_delivery(self, sync: str) -> RunRecord | None:
        """The newest ended run of `sync` when it left records in the sync's snapshot (or, for
        runs logged before snapshot sizes were, sent some); None otherwise."""
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE sync = ? "
                "AND status IN ('success', 'failed', 'interrupted') "
                "ORDER BY started_at DESC, id DESC LIMIT 1",
                (sync,),
            ).fetchone()
        if row is None:
            return None
        run = _run_from_row(row)
        if run.state_records is not None:
            return run if run.state_records > 0 else None
        sent = run.counts.get("create", 0) + run.counts.get("update", 0)
        return run if sent > 0 else None

    def requests_since(self, syncs: Iterable[str], since: datetime) -> int:
        """API requests that runs of these syncs started at or after `since` recorded (the
        `requests` count a run keeps, whatever its status)."""
        names = sorted(set(syncs))
        if not names:
            return 0
        placeholders = ", ".join("?" for _ in names)
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT coalesce(sum({json_integer(self._db.dialect, 'counts', 'requests')}), "
                "0) FROM runs "
                f"WHERE sync IN ({placeholders}) AND started_at >= ?",
                (*names, timestamp_text(since)),
            ).fetchone()
        return int(row[0] or 0)

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
        planned: Mapping[str, int] | None,
        error: str | None,
        message: str | None,
    ) -> RunRecord:
        values = (
            sync,
            status,
            trigger,
            timestamp_text(started_at),
            None if finished_at is None else timestamp_text(finished_at),
            git_commit,
            int(bool(git_dirty)),
            config_hash,
            _counts_json(counts),
            _text(error),
            _text(message),
            _counts_json(planned),
            None,
        )
        with self._db.write() as conn:
            for _attempt in range(5):
                run_id = new_run_id(started_at)
                inserted = conn.execute(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?{', ?' * 13}) "
                    "ON CONFLICT (id) DO NOTHING",
                    (run_id, *values),
                )
                if inserted.rowcount == 1:
                    break
                # else the same second and the same random suffix: draw another
            else:
                raise StateError("could not allocate a unique run id")
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
            return _run_from_row(row.fetchone())


__all__ = [
    "INTERRUPTED_ERROR",
    "RUN_STATUSES",
    "RUN_TRIGGERS",
    "RunLog",
    "RunRecord",
    "RunStatus",
    "RunTrigger",
    "new_run_id",
]
