"""Per-sync locks: a second run of a sync is refused and told who holds the lock."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reverse_etl.errors import StateLockedError, UsageError
from reverse_etl.state import LockInfo, SyncLock, force_unlock, lock_holder

REPO_ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import json, sys
from reverse_etl.state import SyncLock
lock_dir, sync, host = sys.argv[1], sys.argv[2], sys.argv[3]
with SyncLock(lock_dir, sync, command=f"retl run {sync}") as lock:
    if host:  # pretend to be a process on another machine sharing the lock folder
        note = f"{lock_dir}/{sync}.lock.json"
        data = json.load(open(note))
        data["host"] = host
        json.dump(data, open(note, "w"))
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@contextmanager
def held_by_another_process(
    lock_dir: Path, sync: str, host: str = ""
) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock of `sync` until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(lock_dir), sync, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        if child.poll() is None:
            child.stdin.close()
        child.wait(timeout=30)


def write_note(lock_dir: Path, sync: str, pid: int, host: str | None = None) -> None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    note = {
        "sync": sync,
        "pid": pid,
        "host": host or socket.gethostname(),
        "user": "someone",
        "started_at": "2026-01-01T00:00:00+00:00",
        "command": f"retl run {sync}",
    }
    (lock_dir / f"{sync}.lock.json").write_text(json.dumps(note))


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_holding_the_lock_writes_a_note_naming_this_process(tmp_path: Path) -> None:
    with SyncLock(tmp_path / "locks", "crm", command="retl run crm") as lock:
        holder = lock_holder(tmp_path / "locks", "crm")
        assert holder is not None
        assert holder == lock.info
        assert holder.pid == os.getpid()
        assert holder.host == socket.gethostname()
        assert holder.command == "retl run crm"
        assert holder.started_at.tzinfo is not None
        assert (tmp_path / "locks" / "crm.lock.json").is_file()
    assert lock_holder(tmp_path / "locks", "crm") is None
    assert not (tmp_path / "locks" / "crm.lock.json").exists()


def test_a_second_lock_of_the_same_sync_in_this_process_is_refused(tmp_path: Path) -> None:
    with SyncLock(tmp_path, "crm"), pytest.raises(StateLockedError), SyncLock(tmp_path, "crm"):
        pass


def test_locks_of_different_syncs_do_not_interfere(tmp_path: Path) -> None:
    with SyncLock(tmp_path, "crm"), SyncLock(tmp_path, "billing"):
        assert lock_holder(tmp_path, "crm") is not None
        assert lock_holder(tmp_path, "billing") is not None


def test_a_lock_held_by_another_process_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path, "crm") as child:
        with pytest.raises(StateLockedError) as excinfo, SyncLock(tmp_path, "crm"):
            pytest.fail("acquired a lock another process holds")
        message = excinfo.value.message
        assert re.fullmatch(
            rf"sync 'crm' is being run by pid {child.pid} on host {re.escape(socket.gethostname())}"
            r" since \d\d:\d\d:\d\d UTC \(retl run crm\)",
            message,
        ), message
        assert excinfo.value.hint is not None and "retl unlock crm" in excinfo.value.hint

        holder = lock_holder(tmp_path, "crm")
        assert holder is not None and holder.pid == child.pid
    assert lock_holder(tmp_path, "crm") is None
    with SyncLock(tmp_path, "crm"):
        pass


def test_the_lock_of_a_killed_process_does_not_block_the_next_run(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path, "crm") as child:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert (tmp_path / "crm.lock.json").exists()  # its note stays behind

        assert lock_holder(tmp_path, "crm") is None
        with SyncLock(tmp_path, "crm") as lock:
            holder = lock_holder(tmp_path, "crm")
            assert holder is not None and holder.pid == os.getpid() == lock.info.pid  # type: ignore[union-attr]


@pytest.mark.parametrize("whose", ["dead process", "live process", "other host"])
def test_a_stale_note_without_the_lock_held_does_not_block(tmp_path: Path, whose: str) -> None:
    pid = {"dead process": dead_pid(), "live process": os.getppid()}.get(whose, 4242)
    write_note(tmp_path, "crm", pid, host="elsewhere" if whose == "other host" else None)

    assert lock_holder(tmp_path, "crm") is None
    with SyncLock(tmp_path, "crm") as lock:
        assert lock.info is not None and lock.info.pid == os.getpid()
        assert lock_holder(tmp_path, "crm") == lock.info


def test_release_leaves_a_note_it_did_not_write(tmp_path: Path) -> None:
    lock = SyncLock(tmp_path, "crm")
    lock.acquire()
    write_note(tmp_path, "crm", 4242, host="elsewhere")  # e.g. written after a forced unlock
    lock.release()
    assert (tmp_path / "crm.lock.json").exists()
    assert not lock.held


def test_force_unlock_clears_a_stale_note(tmp_path: Path) -> None:
    write_note(tmp_path, "crm", dead_pid())
    assert force_unlock(tmp_path, "crm") is True
    assert not (tmp_path / "crm.lock.json").exists()
    assert force_unlock(tmp_path, "crm") is False


def test_force_unlock_of_a_sync_never_locked_does_nothing(tmp_path: Path) -> None:
    assert force_unlock(tmp_path, "crm") is False


def test_force_unlock_refuses_while_a_live_local_process_holds_the_lock(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path, "crm") as child:
        with pytest.raises(StateLockedError, match="still running") as excinfo:
            force_unlock(tmp_path, "crm")
        assert excinfo.value.hint is not None and f"kill {child.pid}" in excinfo.value.hint
        assert lock_holder(tmp_path, "crm") is not None


def test_force_unlock_never_breaks_a_lock_held_from_another_host(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path, "crm", host="elsewhere") as child:
        holder = lock_holder(tmp_path, "crm")
        assert holder is not None and holder.host == "elsewhere"

        with pytest.raises(StateLockedError, match="still running") as excinfo:
            force_unlock(tmp_path, "crm")

        assert excinfo.value.hint is not None
        assert f"stop it on host elsewhere (pid {child.pid})" in excinfo.value.hint
        assert lock_holder(tmp_path, "crm") == holder
        with pytest.raises(StateLockedError), SyncLock(tmp_path, "crm"):
            pass


def test_force_unlock_never_removes_a_held_lock_whose_note_is_missing(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path, "crm"):
        (tmp_path / "crm.lock.json").unlink()

        with pytest.raises(StateLockedError, match="its holder note is missing") as excinfo:
            force_unlock(tmp_path, "crm")

        assert excinfo.value.hint is not None and "fuser" in excinfo.value.hint
        assert (tmp_path / "crm.lock").exists()
        with pytest.raises(StateLockedError), SyncLock(tmp_path, "crm"):
            pass  # the run still holds it: a second run is refused


def test_describe_shows_the_date_when_the_lock_is_older_than_today() -> None:
    info = LockInfo(
        sync="crm",
        pid=1234,
        host="h",
        user="u",
        started_at=datetime(2020, 5, 6, 7, 8, 9, tzinfo=UTC),
        command="retl run crm",
    )
    assert info.describe() == "pid 1234 on host h since 2020-05-06 07:08:09 UTC (retl run crm)"
    assert LockInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize("name", ["", "..", "a/b", "a\\b"])
def test_a_sync_name_cannot_leave_the_lock_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="not a sync name"):
        SyncLock(tmp_path, name)
