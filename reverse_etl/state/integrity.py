"""Opening a sync's DuckDB state file safely: created private, and when it is locked, truncated or
garbled, a StateError that names the file and what to do. Nothing is ever replaced silently.
"""

from __future__ import annotations

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
    except duckdb.Error as exc:
        raise state_file_error(path, sync, exc) from None
    make_private(path, path.with_name(path.name + ".wal"))


def state_file_error(path: Path, sync: str, exc: duckdb.Error) -> StateError:
    """The error for a state file DuckDB cannot use: in use by another process, or damaged."""
    detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, duckdb.IOException) and "lock" in detail.lower():
        return StateLockedError(
            f"the state of sync '{sync}' is in use by another retl process",
            "wait for that run to finish (see `retl status`), then retry",
        )
    return StateError(
        f"the state file of sync '{sync}' is damaged or unreadable: {path} ({detail})",
        hint=f"restore {path.name} from a backup, or start the sync's state over with "
        f"`retl state reset {sync}` (copy the file aside first to keep it): the next run then "
        "sends every row again",
    )


def _read_back(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]
    ).fetchall()
    for (table,) in tables:
        con.execute(f'SELECT count(*) FROM {alias}."{table}"').fetchall()
        if table == "meta":
            con.execute(f"SELECT * FROM {alias}.meta").fetchall()
