"""Damaged local files get a clear error naming the file and what to do; none is replaced
silently (issue 8 item 12)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def project(local_project: Callable[[str], Path], retl_cli: Callable[..., Any]) -> Path:
    root = local_project("select range as id, 'ana' || range || '@x.org' as email from range(5000)")
    assert retl_cli("run", "people").code == 0
    return root


def truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.read_bytes()


def cut_the_tail(path: Path) -> bytes:
    """The last blocks missing: DuckDB opens the file and fails only when it reads them."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 19 // 20])
    return path.read_bytes()


def garble(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[5000:9000] = b"\xff" * 4000
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("damage", [truncate, cut_the_tail, garble])
@pytest.mark.parametrize(
    "command", [["plan", "people"], ["run", "people"], ["state", "show", "people"]]
)
def test_a_damaged_state_file_is_named_with_what_to_do(
    project: Path,
    retl_cli: Callable[..., Any],
    damage: Callable[[Path], bytes],
    command: list[str],
) -> None:
    state = project / ".retl" / "state" / "people.duckdb"
    damaged = damage(state)

    result = retl_cli(*command)

    # plan and run report a sync's failure among their results (stdout); state show fails as
    # a command (stderr)
    shown = result.out if command[0] in ("plan", "run") else result.err
    assert result.code == 1
    assert "internal error" not in shown and "Traceback" not in shown
    assert (
        "state file of sync 'people' is damaged" in shown
        or "state file of sync 'people' is cut short" in shown
    )
    assert "people.duckdb" in shown
    assert "retl state reset people" in shown
    assert state.read_bytes() == damaged  # left as it was, never replaced


def test_state_reset_starts_over_from_a_damaged_state_file(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    truncate(project / ".retl" / "state" / "people.duckdb")
    assert retl_cli("state", "reset", "people", "--yes").code == 0
    assert retl_cli("run", "people").code == 0


def test_an_empty_run_log_is_reported_and_kept(project: Path, retl_cli: Callable[..., Any]) -> None:
    database = project / ".retl" / "retl.db"
    for companion in (project / ".retl").glob("retl.db-*"):
        companion.unlink()
    database.write_bytes(b"")

    for command in (["runs"], ["run", "people"], ["dlq"], ["status"]):
        result = retl_cli(*command)
        assert result.code == 1, command
        assert "internal error" not in result.err
        assert "retl.db is empty (0 bytes)" in result.err
        assert "restore it from a backup, or move it aside" in result.err
    assert database.read_bytes() == b""


def test_a_garbled_run_log_is_reported_and_kept(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    database = project / ".retl" / "retl.db"
    for companion in (project / ".retl").glob("retl.db-*"):
        companion.unlink()
    database.write_bytes(b"this is not a database" * 100)

    result = retl_cli("runs")

    assert result.code == 1
    assert "retl.db" in result.err and "damaged" in result.err
    assert database.read_bytes() == b"this is not a database" * 100


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """Make a path immutable (`chattr +i`): even root may then not write it, as a file of
    another user or on a read-only mount refuses an ordinary user."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("this file system or user cannot make a file immutable")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.parametrize("locked", ["file", "folder"])
@pytest.mark.parametrize("command", [["run", "people"], ["state", "reset", "people", "--yes"]])
def test_a_state_file_retl_may_not_write_is_a_permission_problem_not_damage(
    project: Path,
    retl_cli: Callable[..., Any],
    immutable: Callable[[Path], None],
    locked: str,
    command: list[str],
) -> None:
    state = project / ".retl" / "state" / "people.duckdb"
    immutable(state if locked == "file" else state.parent)

    result = retl_cli(*command)

    assert result.code == 1
    # A run reports it in its summary (stdout); `state reset` as its error (stderr).
    shown = result.out + result.err
    assert "internal error" not in shown and "Traceback" not in shown
    assert "state file of sync 'people'" in shown and "(permission)" in shown
    assert "damaged" not in shown and "state reset" not in shown
    assert "do not reset it" in shown
