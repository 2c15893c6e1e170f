"""Private files: retl's local state holds customer data (dead letters) and must not be readable
by other users of a shared host. Directories are 0700, files 0600, whole files written atomically.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600

_umask_lock = threading.RLock()


def private_dir(path: Path) -> Path:
    """`mkdir -p path` with every directory it creates (and `path` itself) at mode 0700."""
    path = Path(path)
    missing: list[Path] = []
    parent = path
    while not parent.exists():
        missing.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for created in [*missing, path]:
        _tighten(created, DIR_MODE)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write the whole file or nothing (temp file 0600 in the same directory, fsync, rename)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_private(path: Path) -> bool:
    """Create an empty file at mode 0600 unless it exists; True when this call created it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def make_private(*paths: Path) -> None:
    """Tighten existing files to 0600 (files an older retl created 0644); missing ones are skipped."""
    for path in paths:
        _tighten(Path(path), FILE_MODE)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created meanwhile (by DuckDB, SQLite...) get no group/other bits.

    The umask is process-wide: other threads creating files meanwhile get private files too,
    which errs on the safe side.
    """
    with _umask_lock:
        previous = os.umask(0o077)
        try:
            yield
        finally:
            os.umask(previous)


def _tighten(path: Path, mode: int) -> None:
    with contextlib.suppress(OSError):  # missing, or owned by someone else: leave it
        if stat.S_IMODE(path.stat().st_mode) & ~mode:
            path.chmod(mode)
