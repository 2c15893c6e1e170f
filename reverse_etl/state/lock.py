"""Per-sync run locks: one run of a sync at a time, across processes.

`<lock_dir>/<sync>.lock` carries an OS file lock (flock), which the OS releases when its process
dies, so a killed run never blocks the next one. `<sync>.lock.json` beside it names the holder
(pid, host, user, start, command) for the refusal message and `retl status`; it is only a note:
whether the sync is locked is always decided by the file lock.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from reverse_etl.errors import StateError, StateLockedError, UsageError
from reverse_etl.files import FILE_MODE, private_dir, write_private
from reverse_etl.state.fence import Fence

# How long a refused acquirer waits for a new holder to write its note before naming whatever
# note it finds: the note is written just after the file lock is taken.
_NOTE_GRACE_S = 0.5


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or last held) a sync's lock, as written in its holder note."""

    sync: str
    pid: int
    host: str
    user: str | None
    started_at: datetime
    command: str | None

    def describe(self) -> str:
        """`pid 1234 on host h since 21:15:30 UTC (retl run x)`."""
        text = f"pid {self.pid} on host {self.host} since {_clock(self.started_at)}"
        return f"{text} ({self.command})" if self.command else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "pid": self.pid,
            "host": self.host,
            "user": self.user,
            "started_at": self.started_at.isoformat(),
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockInfo:
        started_at = datetime.fromisoformat(str(data["started_at"]))
        if started_at.tzinfo is None:
            started_at = started_at.replace(tzinfo=UTC)
        return cls(
            sync=str(data["sync"]),
            pid=int(data["pid"]),
            host=str(data["host"]),
            user=None if data.get("user") is None else str(data["user"]),
            started_at=started_at,
            command=None if data.get("command") is None else str(data["command"]),
        )


class SyncLock:
    """Context manager that holds the lock of one sync; never waits.

    Entering raises StateLockedError (naming the holder) when another process, or another
    SyncLock in this process, holds the lock. A leftover holder note of a process that died is
    ignored and replaced.
    """

    #: A local lock fences nothing: no other machine shares this project's state.
    fence: Fence | None = None

    def __init__(self, lock_dir: str | Path, sync: str, command: str | None = None) -> None:
        _check_sync_name(sync)
        self.lock_dir = Path(lock_dir)
        self.sync = sync
        self.command = command if command is not None else _current_command()
        self.info: LockInfo | None = None
        self._lock = filelock.FileLock(
            _lock_path(self.lock_dir, sync), timeout=0, mode=FILE_MODE, thread_local=False
        )

    @property
    def held(self) -> bool:
        return self.info is not None

    def acquire(self) -> LockInfo:
        """Take the lock and write the holder note; returns the note."""
        if self.info is not None:
            raise StateError(f"the lock of sync '{self.sync}' is already held by this SyncLock")
        try:
            private_dir(self.lock_dir)
            self._lock.acquire(timeout=0, blocking=False)
        except filelock.Timeout:
            raise _locked_error(self.sync, _wait_for_note(self.lock_dir, self.sync)) from None
        except OSError as exc:
            raise StateError(f"cannot take the lock of sync '{self.sync}': {exc}") from exc
        info = LockInfo(
            sync=self.sync,
            pid=os.getpid(),
            host=socket.gethostname(),
            user=_current_user(),
            started_at=datetime.now(UTC).replace(microsecond=0),
            command=self.command,
        )
        try:
            _write_note(_note_path(self.lock_dir, self.sync), info)
        except OSError as exc:
            self._lock.release()
            raise StateError(f"cannot write the lock note of sync '{self.sync}': {exc}") from exc
        self.info = info
        return info

    def release(self) -> None:
        """Remove our holder note, then let the lock go. Does nothing when not held."""
        if self.info is None:
            return
        note = _note_path(self.lock_dir, self.sync)
        # Before the unlock, so that the next holder's note is never the one removed.
        if _read_note(note) == self.info:
            with contextlib.suppress(FileNotFoundError):
                note.unlink()
        self.info = None
        self._lock.release()

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(lock_dir: str | Path, sync: str) -> LockInfo | None:
    """Who holds the lock of `sync` now; None when nobody does (a stale note is not a holder)."""
    _check_sync_name(sync)
    lock_dir = Path(lock_dir)
    info = _read_note(_note_path(lock_dir, sync))
    if info is None:
        return None
    if info.host == socket.gethostname() and not _pid_alive(info.pid):
        return None  # the OS released its file lock when it died
    return info if _is_locked(lock_dir, sync) else None


def force_unlock(lock_dir: str | Path, sync: str) -> bool:
    """Clear the lock of `sync` (`retl unlock`); True when there was something to clear.

    A stale note is removed. A lock whose file lock is held is never removed, whoever holds it
    and whether or not its note is there: the OS (or the file server) keeps a file lock only
    while its process lives, and removing the file would let a second run start beside it.
    That raises StateLockedError naming the holder when its note does.
    """
    _check_sync_name(sync)
    lock_dir = Path(lock_dir)
    lock_path, note = _lock_path(lock_dir, sync), _note_path(lock_dir, sync)
    if not lock_path.exists() and not note.exists():
        return False
    probe = filelock.FileLock(lock_path, timeout=0, mode=FILE_MODE, thread_local=False)
    try:
        probe.acquire(timeout=0, blocking=False)
    except filelock.Timeout:
        raise _held_error(sync, lock_path, _read_note(note)) from None
    try:
        existed = note.exists()
        with contextlib.suppress(FileNotFoundError):
            note.unlink()
        return existed
    finally:
        probe.release()


def _held_error(sync: str, lock_path: Path, info: LockInfo | None) -> StateLockedError:
    """`retl unlock` of a lock a live process holds: who, and how to stop it."""
    unlock_only = "`retl unlock` only clears locks whose process is gone"
    if info is None:
        return StateLockedError(
            f"sync '{sync}' is locked by a running process (its holder note is missing)",
            hint=f"find it with `fuser {lock_path}` or `lsof {lock_path}` on the machine that "
            f"runs it and stop it; {unlock_only}",
        )
    if info.host == socket.gethostname():
        stop = f"stop that process first (kill {info.pid})"
    else:
        stop = f"stop it on host {info.host} (pid {info.pid})"
    return StateLockedError(
        f"sync '{sync}' is being run by {info.describe()}, which is still running",
        hint=f"{stop}; {unlock_only}",
    )


def _lock_path(lock_dir: Path, sync: str) -> Path:
    return lock_dir / f"{sync}.lock"


def _note_path(lock_dir: Path, sync: str) -> Path:
    return lock_dir / f"{sync}.lock.json"


def _check_sync_name(sync: str) -> None:
    if not sync or sync in (".", "..") or any(c in sync for c in "/\\\0"):
        raise UsageError(
            f"{sync!r} is not a sync name",
            hint="a sync name is the stem of a file in syncs/ (e.g. crm_contacts)",
        )


def _is_locked(lock_dir: Path, sync: str) -> bool:
    # Taking the lock is the only portable test; it is held for microseconds.
    probe = filelock.FileLock(
        _lock_path(lock_dir, sync), timeout=0, mode=FILE_MODE, thread_local=False
    )
    try:
        probe.acquire(timeout=0, blocking=False)
    except filelock.Timeout:
        return True
    except OSError:
        return False
    probe.release()
    return False


def _locked_error(sync: str, info: LockInfo | None) -> StateLockedError:
    who = info.describe() if info is not None else "another process"
    return StateLockedError(
        f"sync '{sync}' is being run by {who}",
        hint=f"wait for it to finish, or run `retl unlock {sync}` if that process is gone",
    )


def _wait_for_note(lock_dir: Path, sync: str) -> LockInfo | None:
    """The holder's note; waits briefly while the note is missing or names a dead process
    (the new holder is about to write its own)."""
    note = _note_path(lock_dir, sync)
    deadline = time.monotonic() + _NOTE_GRACE_S
    while True:
        info = _read_note(note)
        current = info is not None and (info.host != socket.gethostname() or _pid_alive(info.pid))
        if current or time.monotonic() >= deadline:
            return info
        time.sleep(0.05)


def _read_note(path: Path) -> LockInfo | None:
    try:
        return LockInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_note(path: Path, info: LockInfo) -> None:
    write_private(path, json.dumps(info.to_dict(), indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host. Assumes yes when it cannot tell."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no login name in the environment nor the password database
        return None


def _current_command() -> str:
    args = list(sys.argv) or ["python"]
    args[0] = os.path.basename(args[0]) or "python"
    text = shlex.join(args)
    return text if len(text) <= 200 else text[:197] + "..."


def _clock(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    if moment.date() == datetime.now(UTC).date():
        return f"{moment:%H:%M:%S} UTC"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
