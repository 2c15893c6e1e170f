"""What git knows about a sync file: the commit a run used, and the file's history.

Git is optional: outside a repository, with git missing, or when git fails or hangs, these
functions return None/False/[] and never raise.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

GIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FileVersion:
    """The last commit that touched a file, and whether the working copy differs from it.

    `dirty` is also true for a file git does not track (untracked or ignored) or that was
    deleted. Both are None/False when the file is not in a git repository.
    """

    commit: str | None
    dirty: bool


@dataclass(frozen=True)
class GitCommit:
    """One commit in a file's history (`retl history`)."""

    commit: str
    author: str
    email: str
    date: datetime  # the author date, in the author's UTC offset
    message: str

    @property
    def subject(self) -> str:
        """The message's first line."""
        return self.message.split("\n", 1)[0]


def file_version(path: str | Path) -> FileVersion:
    """The commit and dirty flag of `path` for the run log."""
    located = _locate(path)
    if located is None:
        return FileVersion(commit=None, dirty=False)
    top, rel = located
    commit = _git(top, "log", "-1", "--format=%H", "--", rel)
    status = _git(top, "status", "--porcelain", "--ignored", "--untracked-files=all", "--", rel)
    return FileVersion(
        commit=commit.strip() or None if commit is not None else None,
        dirty=bool(status.strip()) if status is not None else False,
    )


def file_history(path: str | Path, limit: int = 50) -> list[GitCommit]:
    """Commits that changed `path` (following renames), newest first, at most `limit`."""
    located = _locate(path)
    if located is None or limit <= 0:
        return []
    top, rel = located
    out = _git(
        top,
        "log",
        "--follow",
        "-z",
        "--no-color",
        "--no-show-signature",
        f"--max-count={int(limit)}",
        "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B",
        "--",
        rel,
    )
    if not out:
        return []
    commits = []
    for entry in out.split("\0"):
        fields = entry.split("\x1f", 4)
        if len(fields) != 5:
            continue
        sha, author, email, date, message = fields
        try:
            when = datetime.fromisoformat(date)
        except ValueError:
            continue
        commits.append(GitCommit(sha.strip(), author, email, when, message.strip()))
    return commits


def _locate(path: str | Path) -> tuple[Path, str] | None:
    """The repository's top folder and `path` relative to it; None outside a repository."""
    target = Path(path).expanduser()
    target = (Path.cwd() / target) if not target.is_absolute() else target
    # Resolve the folder, not the file: a symlinked sync file is versioned as the link.
    folder = target.parent.resolve()
    start = folder
    while not start.is_dir():  # the file's folder may be gone (deleted sync)
        if start.parent == start:
            return None
        start = start.parent
    top = _git(start, "rev-parse", "--show-toplevel")
    if not top or not top.strip():
        return None
    top_path = Path(top.strip()).resolve()
    try:
        rel = (folder / target.name).relative_to(top_path)
    except ValueError:
        return None
    return top_path, rel.as_posix()


def _git(cwd: Path, *args: str) -> str | None:
    """stdout of `git args` run in `cwd`; None when git is missing, fails or times out."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    try:
        proc = subprocess.run(
            ["git", "--no-pager", "--literal-pathspecs", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", errors="replace")
