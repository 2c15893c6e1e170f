"""`retl init`: write a new project that validates and runs as is, from packaged templates.

The templates live in `reverse_etl/project/templates/init/` (package data). The example syncs rows of
an inline SQL table from an in-memory DuckDB into a SQLite file, so it needs no server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from reverse_etl.errors import ProjectFilesExistError, RetlError

# Template (under templates/init/) -> path in the new project. `gitignore` carries no dot so
# that it is neither hidden from the package-data glob nor read by git as this repo's ignore file.
TEMPLATES: dict[str, str] = {
    "retl.yml": "retl.yml",
    "syncs/example.yml": "syncs/example.yml",
    "sql/example.sql": "sql/example.sql",
    "gitignore": ".gitignore",
}
GITIGNORE = ".gitignore"


@dataclass
class ScaffoldResult:
    """What `init_project` did; paths are relative to `root`."""

    root: Path
    created: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    gitignore_updated: bool = False


def template_root() -> Traversable:
    """The packaged project templates, found the same way in an editable or a wheel install."""
    return files("reverse_etl.project").joinpath("templates", "init")


def init_project(directory: Path, *, force: bool = False) -> ScaffoldResult:
    """Write the project files into `directory` (created if missing).

    Existing files are never overwritten without `force`: the call raises before writing
    anything. An existing `.gitignore` is kept and only gains the lines it lacks.
    """
    root = directory.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ProjectFilesExistError(f"{root} exists and is not a directory")
    contents = {target: _template_text(name) for name, target in TEMPLATES.items()}

    existing = [target for target in contents if target != GITIGNORE and (root / target).exists()]
    if existing and not force:
        listed = ", ".join(existing)
        raise ProjectFilesExistError(
            f"{root} already has {listed}; nothing was written",
            "pass --force to overwrite them, or choose another directory",
        )

    result = ScaffoldResult(root=root)
    for target, text in contents.items():
        path = root / target
        if target == GITIGNORE and path.exists():
            result.gitignore_updated = _merge_lines(path, text)
            continue
        (result.overwritten if path.exists() else result.created).append(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return result


def _template_text(name: str) -> str:
    resource = template_root().joinpath(*name.split("/"))
    try:
        return resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetlError(
            f"the project template '{name}' is missing from the installed retl package",
            "reinstall retl from where it came from (pip install --force-reinstall with the same "
            "path or git URL)",
        ) from None


def _merge_lines(path: Path, template: str) -> bool:
    """Append the template's ignore patterns that `path` lacks; True when it changed."""
    current = path.read_text(encoding="utf-8")
    present = {line.strip() for line in current.splitlines()}
    missing = [
        line
        for line in template.splitlines()
        if line.strip() and not line.startswith("#") and line.strip() not in present
    ]
    if not missing:
        return False
    separator = "" if not current or current.endswith("\n") else "\n"
    path.write_text(current + separator + "\n".join(["# retl", *missing]) + "\n", encoding="utf-8")
    return True


__all__ = ["TEMPLATES", "ScaffoldResult", "init_project"]
