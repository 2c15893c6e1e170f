"""A git repository holding a retl project of five syncs that needs no server (DuckDB in memory
into SQLite and JSON Lines files), and the pull-request branch the CI tests review: it adds a
field to `b_accounts`' mapping and switches `c_leads` to mode delete.

`published(tmp_path)` makes the repository the way CI sees it: a clone whose `origin/main` is
the published project and whose checked-out branch `change` holds the pull request.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

RETL_YML = """\
version: 1
warehouses:
  demo:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: sql
    url: sqlite:///out/app.sqlite
    create_tables: true
  exports:
    type: file
    path: out/exports
    format: jsonl
"""
ROWS = (
    "select i as id, 'user' || i || '@example.com' as email, "
    "case when i % 2 = 0 then 'pro' else 'free' end as plan from range(1, 21) t(i)"
)
SYNC = """\
warehouse: demo
source:
  sql: "{sql}"
destination:
  name: {destination}
  object: {name}
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
schedule: {schedule}
"""
SYNCS = {
    "a_contacts": ("app", '"*/15 * * * *"'),
    "b_accounts": ("app", '"0 * * * *"'),
    "c_leads": ("app", "manual"),
    "d_events": ("exports", "manual"),
    "e_orders": ("exports", "manual"),
}
SOURCE_ROWS = 20


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def write_project(root: Path) -> None:
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(RETL_YML)
    (root / ".gitignore").write_text(".retl/\nout/\n")
    for name, (destination, schedule) in SYNCS.items():
        text = SYNC.format(sql=ROWS, destination=destination, name=name, schedule=schedule)
        (root / "syncs" / f"{name}.yml").write_text(text)


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / "syncs" / f"{name}.yml"
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def make_pull_request(root: Path) -> None:
    """On a new branch `change`: b_accounts maps `plan` too, c_leads deletes."""
    git(root, "checkout", "-q", "-b", "change")
    edit(root, "b_accounts", "  email: email\n", "  email: email\n  plan: plan\n")
    edit(root, "c_leads", "mode: upsert\n", "mode: delete\nallow_destructive: true\n")
    git(root, "commit", "-q", "-am", "accounts get their plan; leads are erased")


def repository(root: Path) -> Path:
    """The project committed on `main`, with the pull request on branch `change`."""
    root.mkdir(parents=True, exist_ok=True)
    write_project(root)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "commit.gpgsign", "false")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "five syncs")
    make_pull_request(root)
    return root


def published(tmp_path: Path) -> Path:
    """A clone of the project as a CI runner has it: `origin/main` is the published project,
    the pull request's branch `change` is checked out."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    write_project(upstream)
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "five syncs")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(upstream), str(clone)], check=True, capture_output=True
    )
    make_pull_request(clone)
    return clone
