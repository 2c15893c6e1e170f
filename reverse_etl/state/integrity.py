"""Opening a sync's DuckDB state file safely: created private, and when it is locked, truncated or
garbled, a StateError that names the file and what to do. Nothing is ever replaced silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from reverse_etl.errors import StateError, StateLockedError
from reverse_etl.files import make_private, private_umask


@contextmanager
def attaching_state_file(
    con: duckdb.DuckDBPyConnection, alias: str, path: Path, sync: str
) -> Iterator[None]:
    """Wrap the ATTACH of `path` as `alias`: whatever it creates gets no group/other access, and
    the attached file is read back at once, so that damage shows here and not mid-plan (DuckDB
    reads lazily)."""
    try:
        with private_umask():
            yield
        _read_back(con, alias)
        _check_length(con, alias, path, sync)
    except duckdb.Error as exc:
        raise state_file_error(path, sync, exc) from None
    make_private(path, path.with_name(path.name + ".wal"))


# What the OS says when the file is fine but this user may not open or change it.
_PERMISSION = ("permission denied", "operation not permitted", "read-only file system")
# DuckDB's file layout: a main header and two database headers, then blocks of `block_size`.
_HEADER_BYTES = 3 * 4096


def state_file_error(path: Path, sync: str, exc: BaseException) -> StateError:
    """The error for a state file retl cannot use: in use by another process, not permitted
    (a permission problem, never a reason to reset), or damaged."""
    detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, duckdb.IOException) and "lock" in detail.lower():
        return StateLockedError(
            f"the state of sync '{sync}' is in use by another retl process",
            "wait for that run to finish (see `retl status`), then retry",
        )
    if isinstance(exc, PermissionError) or any(p in detail.lower() for p in _PERMISSION):
        return permission_error(path, sync, detail)
    return damaged_error(path, sync, f"is damaged or unreadable: {path} ({detail})")


def permission_error(path: Path, sync: str, detail: str) -> StateError:
    """The state file is intact but this user may not read or write it (or its folder)."""
    return StateError(
        f"the state file of sync '{sync}' {_access(path)} (permission): {path} ({detail})",
        hint=f"let the user running retl read and write {path.name} and its folder "
        f"{path.parent} (chmod u+rw, chown, or a writable mount); the state itself is intact, "
        "so do not reset it",
    )


def damaged_error(path: Path, sync: str, what: str) -> StateError:
    return StateError(
        f"the state file of sync '{sync}' {what}",
        hint=f"restore {path.name} from a backup, or start the sync's state over with "
        f"`retl state reset {sync}` (copy the file aside first to keep it): the next run then "
        "sends every row again",
    )


def _access(path: Path) -> str:
    """`is not writable`, `is not readable`, ... as far as the OS tells this user."""
    missing = [
        word
        for word, mode in (("readable", os.R_OK), ("writable", os.W_OK))
        if path.exists() and not os.access(path, mode)
    ]
    if missing:
        return "is not " + " or ".join(missing)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return "is in a folder retl may not write to"
    return "may not be used"


def _check_length(con: duckdb.DuckDBPyConnection, alias: str, path: Path, sync: str) -> None:
    """A file cut short (a copy or a full disk) fails only when a missing block is read, which
    may be mid-plan: the file must at least hold the blocks its header counts as used (free
    blocks may lie past a file DuckDB shortened, so they are not counted)."""
    row = con.execute(
        "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = ?",
        [alias],
    ).fetchone()
    if row is None or not row[0]:
        return
    expected = _HEADER_BYTES + int(row[0]) * int(row[1])
    actual = path.stat().st_size
    if actual < expected:
        raise damaged_error(
            path,
            sync,
            f"is cut short: {path} holds {actual:,} bytes, its header counts at least "
            f"{expected:,} (copied in part, or written to a full disk?)",
        )


def _read_back(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]
    ).fetchall()
    for (table,) in tables:
        con.execute(f'SELECT count(*) FROM {alias}."{table}"').fetchall()
        if table == "meta":
            con.execute(f"SELECT * FROM {alias}.meta").fetchall()
