"""Operational pauses: `retl pause SYNC --reason ...` stops a sync during an incident without a
commit, on top of `paused:` in its file. Kept in `.retl/retl.db` (state/database.py) with who
paused it, when and why; `retl resume SYNC` lifts it. Reasons are redacted before they are kept.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reverse_etl.errors import UsageError
from reverse_etl.git import user_name
from reverse_etl.redact import redact
from reverse_etl.state.database import (
    Database,
    StateDatabase,
    parse_timestamp,
    timestamp_text,
    utc_now,
)


@dataclass(frozen=True)
class Pause:
    """A sync paused by someone, at a moment, for a reason."""

    sync: str
    by: str
    at: datetime
    reason: str

    def describe(self) -> str:
        """`paused by alice <a@x> at 2026-12-01 13:40 UTC: reason` (one line)."""
        return f"paused by {self.by} at {self.at:%Y-%m-%d %H:%M} UTC: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"sync": self.sync, "by": self.by, "at": self.at.isoformat(), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pause:
        at = parse_timestamp(str(data["at"]))
        assert at is not None
        return cls(str(data["sync"]), str(data["by"]), at, str(data["reason"]))


def current_user(folder: Path) -> str:
    """Who is pausing: git's user.name <user.email> in `folder`, else $USER, else the login."""
    found = user_name(folder) or os.environ.get("USER") or os.environ.get("LOGNAME")
    if found:
        return found
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class PauseStore:
    """The operational pauses of a project. Safe to use from several processes and threads."""

    def __init__(self, database: str | Path | StateDatabase) -> None:
        self._db = Database(database) if isinstance(database, str | Path) else database

    def pause(self, sync: str, reason: str, by: str) -> Pause:
        """Pause `sync` now; pausing a paused sync replaces who, when and why."""
        reason = " ".join(reason.split())
        if not reason:
            raise UsageError(
                "a pause needs a reason that says why", f'retl pause {sync} --reason "..."'
            )
        pause = Pause(sync, redact(by), utc_now(), redact(reason))
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO pauses (sync, paused_by, paused_at, reason) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sync) DO UPDATE SET paused_by = excluded.paused_by, "
                "paused_at = excluded.paused_at, reason = excluded.reason",
                (pause.sync, pause.by, timestamp_text(pause.at), pause.reason),
            )
        return pause

    def resume(self, sync: str) -> Pause | None:
        """Lift the pause of `sync`; returns it, or None when the sync was not paused."""
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT sync, paused_by, paused_at, reason FROM pauses WHERE sync = ?", (sync,)
            ).fetchone()
            conn.execute("DELETE FROM pauses WHERE sync = ?", (sync,))
        return None if row is None else _pause(row)

    def get(self, sync: str) -> Pause | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT sync, paused_by, paused_at, reason FROM pauses WHERE sync = ?", (sync,)
            ).fetchone()
        return None if row is None else _pause(row)

    def all(self) -> dict[str, Pause]:
        """Every paused sync by name."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sync, paused_by, paused_at, reason FROM pauses ORDER BY sync"
            ).fetchall()
        return {row[0]: _pause(row) for row in rows}


def _pause(row: tuple[Any, ...]) -> Pause:
    at = parse_timestamp(row[2])
    assert at is not None
    return Pause(sync=row[0], by=row[1], at=at, reason=row[3])


__all__ = ["Pause", "PauseStore", "current_user"]
