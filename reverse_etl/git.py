"""What git knows about a project's files: a run's version, `retl history`, `--base` reviews.

A sync is decided by several files (the sync file and its `source.file` SQL), so the version
functions take every one of them. They treat git as optional: outside a repository, with git
missing, or when git fails or hangs, they return None/False/[] and never raise. The ref
functions (`--base`) need git and raise UsageError saying what to do instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reverse_etl.errors import UsageError

GIT_TIMEOUT_S = 10.0

PathLike = str | Path


@dataclass(frozen=True)
class FileVersion:
    """The last commit that touched any of a sync's files, and whether any working copy differs.

    `dirty` is also true for a file git does not track (untracked or ignored) or that was
    deleted. Both are None/False when the files are not in a git repository.
    """

    commit: str | None
    dirty: bool


@dataclass(frozen=True)
class GitCommit:
    """One commit in a sync's history (`retl history`)."""

    commit: str
    author: str
    email: str
    date: datetime  # the author date, in the author's UTC offset
    message: str

    @property
    def subject(self) -> str:
        """The message's first line."""
        return self.message.split("\n", 1)[0]


def file_version(paths: PathLike | Iterable[PathLike]) -> FileVersion:
    """The commit and dirty flag of a sync's files for the run log; the first file decides the
    repository, and a further file outside it counts as dirty (git cannot vouch for it)."""
    files = _as_list(paths)
    located = _locate(files[0]) if files else None
    if located is None:
        return FileVersion(commit=None, dirty=False)
    top = located[0]
    rels, outside = _relative_all(top, files)
    commit = _git(top, "log", "-1", "--format=%H", "--", *rels)
    status = _git(top, "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *rels)
    return FileVersion(
        commit=commit.strip() or None if commit is not None else None,
        dirty=outside or (bool(status.strip()) if status is not None else False),
    )


def file_history(paths: PathLike | Iterable[PathLike], limit: int = 50) -> list[GitCommit]:
    """Commits that changed any of the files (each followed through renames), newest first,
    at most `limit`."""
    files = _as_list(paths)
    located = _locate(files[0]) if files else None
    if located is None or limit <= 0:
        return []
    top = located[0]
    rels, _ = _relative_all(top, files)
    histories = [_history(top, rel, limit) for rel in rels]
    return _merge_newest_first(histories)[:limit]


def repository_at_ref(folder: Path, ref: str) -> Path:
    """The top folder of the repository holding `folder`, once `ref` is known to name one of
    its commits; UsageError saying what to do otherwise."""
    if not ref or ref.startswith("-"):
        raise UsageError(
            f"'{ref}' is not a git ref", "name a branch, tag or commit, e.g. main or origin/main"
        )
    out = _git_or_raise(
        folder,
        "rev-parse",
        "--show-toplevel",
        error=f"{folder} is not in a git repository",
        hint="--base and --changed-since compare with a git ref: run them in a clone of the "
        "project's repository",
    )
    top = Path(out.strip()).resolve()
    _git_or_raise(
        top,
        "rev-parse",
        "--verify",
        "--quiet",
        f"{ref}^{{commit}}",
        error=f"unknown git ref '{ref}'",
        hint="name a branch, tag or commit; in CI fetch it first (e.g. fetch-depth: 0)",
    )
    return top


def changed_since(folder: Path, ref: str) -> set[Path]:
    """Files (resolved paths) that differ from `ref` in the working copy, committed or not,
    untracked ones included: `plan --changed-since` picks the syncs with one of their files
    (`Sync.files`) in it. UsageError for a bad ref or outside a repository."""
    top = repository_at_ref(folder, ref)
    changed = _git_or_raise(
        top, "diff", "--name-only", "-z", ref, "--", error=f"cannot compare with '{ref}'"
    )
    untracked = _git_or_raise(
        top, "ls-files", "--others", "--exclude-standard", "-z", error="cannot list new files"
    )
    names = [n for n in (changed + untracked).split("\0") if n]
    return {(top / name).resolve() for name in names}


def head_commit(folder: Path) -> str | None:
    """The commit checked out in the repository holding `folder`; None outside one."""
    out = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD")
    return out.strip() or None if out is not None else None


def file_at(top: Path, ref: str, path: Path) -> str | None:
    """The file's text at `ref`, or None when it did not exist there or lies outside `top`."""
    try:
        rel = (path.parent.resolve() / path.name).relative_to(top).as_posix()
    except ValueError:
        return None
    return _git(top, "show", f"{ref}:{rel}")


# --- helpers ----------------------------------------------------------------------------------


def user_name(folder: Path) -> str | None:
    """Who git says is working in `folder` (`user.name`, with `<user.email>` when set); None
    without git or without a configured name."""
    name = (_git(folder, "config", "user.name") or "").strip()
    if not name:
        return None
    email = (_git(folder, "config", "user.email") or "").strip()
    return f"{name} <{email}>" if email else name


def _as_list(paths: PathLike | Iterable[PathLike]) -> list[PathLike]:
    return [paths] if isinstance(paths, str | Path) else list(paths)


def _relative_all(top: Path, files: Sequence[PathLike]) -> tuple[list[str], bool]:
    """Paths relative to `top` (duplicates dropped), and whether any file lies outside it."""
    rels: list[str] = []
    outside = False
    for path in files:
        located = _locate(path)
        if located is None or located[0] != top:
            outside = True
        elif located[1] not in rels:
            rels.append(located[1])
    return rels, outside


def _history(top: Path, rel: str, limit: int) -> list[tuple[int, GitCommit]]:
    out = _git(
        top,
        "log",
        "--follow",
        "-z",
        "--no-color",
        "--no-show-signature",
        f"--max-count={int(limit)}",
        "--format=%H%x1f%ct%x1f%an%x1f%ae%x1f%aI%x1f%B",
        "--",
        rel,
    )
    commits: list[tuple[int, GitCommit]] = []
    for entry in (out or "").split("\0"):
        fields = entry.split("\x1f", 5)
        if len(fields) != 6:
            continue
        sha, committed, author, email, date, message = fields
        try:
            when, order = datetime.fromisoformat(date), int(committed)
        except ValueError:
            continue
        commits.append((order, GitCommit(sha.strip(), author, email, when, message.strip())))
    return commits


def _merge_newest_first(histories: list[list[tuple[int, GitCommit]]]) -> list[GitCommit]:
    """Merge per-file histories (each newest first) by commit time, keeping each file's order
    on ties and listing a commit that touched several files once."""
    heads = [0] * len(histories)
    seen: set[str] = set()
    merged: list[GitCommit] = []
    while True:
        best: int | None = None
        for index, history in enumerate(histories):
            if heads[index] < len(history) and (
                best is None or history[heads[index]][0] > histories[best][heads[best]][0]
            ):
                best = index
        if best is None:
            return merged
        commit = histories[best][heads[best]][1]
        heads[best] += 1
        if commit.commit not in seen:
            seen.add(commit.commit)
            merged.append(commit)


def _locate(path: PathLike) -> tuple[Path, str] | None:
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


def _run(cwd: Path, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return subprocess.run(
        ["git", "--no-pager", "--literal-pathspecs", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


def _git(cwd: Path, *args: str) -> str | None:
    """stdout of `git args` run in `cwd`; None when git is missing, fails or times out."""
    try:
        proc = _run(cwd, args)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", errors="replace")


def _git_or_raise(cwd: Path, *args: str, error: str, hint: str | None = None) -> str:
    """stdout of `git args`; UsageError(error) when git fails, is missing or hangs."""
    try:
        proc = _run(cwd, args)
    except subprocess.TimeoutExpired:
        raise UsageError(f"git {args[0]} did not answer within {GIT_TIMEOUT_S:g}s") from None
    except OSError as exc:
        raise UsageError(f"cannot run git: {exc.strerror or exc}", "install git") from None
    if proc.returncode != 0:
        raise UsageError(error, hint)
    return proc.stdout.decode("utf-8", errors="replace")
