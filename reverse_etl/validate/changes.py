"""`retl validate --base GIT_REF`: the changes since a git ref that raise a sync's risk.

Each sync file is compared with its version at the ref (`git show REF:path`); a new
destructive sync, a switch to deleting, `allow_destructive` turned on, a delete or error
limit raised or removed, or a new destination become warnings at the line of the key in the
new file. Warnings never fail validation; a bad ref or a project outside git is a UsageError.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from reverse_etl.config.models import Limits
from reverse_etl.config.problems import Problem
from reverse_etl.config.project import Project, Sync
from reverse_etl.config.yamlio import Path_, load_yaml
from reverse_etl.git import file_at, repository_at_ref

_DELETES = "review: this run may delete records"
_UNSET = object()
# What a missing key means (the models' defaults); None means "no limit".
_LIMIT_DEFAULTS: dict[str, float | None] = {
    name: info.default for name, info in Limits.model_fields.items()
}


def changes_since(project: Project, syncs: Iterable[Sync], ref: str) -> list[Problem]:
    """Warnings for the risky changes of each sync file since `ref`, in file order."""
    top = repository_at_ref(project.root, ref)
    problems: list[Problem] = []
    for sync in syncs:
        new = sync.document.data
        if not isinstance(new, dict):
            continue  # validation already reports an unreadable file
        old_text = file_at(top, ref, sync.path)
        if old_text is None:
            problems.extend(_new_sync(sync, new, ref))
            continue
        old = load_yaml(old_text, sync.file, os.environ).data
        problems.extend(_changed_sync(sync, old if isinstance(old, dict) else {}, new, ref))
    return problems


def _new_sync(sync: Sync, new: dict[str, Any], ref: str) -> list[Problem]:
    found = []
    if _get(new, ("mode",)) == "delete":
        found.append(_warn(sync, ("mode",), f"new sync with mode delete (not in {ref})", _DELETES))
    if _get(new, ("on_removed",)) == "delete":
        found.append(
            _warn(
                sync, ("on_removed",), f"new sync with on_removed delete (not in {ref})", _DELETES
            )
        )
    return found


def _changed_sync(sync: Sync, old: dict[str, Any], new: dict[str, Any], ref: str) -> list[Problem]:
    found: list[Problem] = []
    for key, default in (("mode", None), ("on_removed", "ignore")):
        before, after = _get(old, (key,), default), _get(new, (key,), default)
        if after == "delete" and before != "delete":
            found.append(
                _warn(
                    sync,
                    (key,),
                    f"{key} changed from {_shown(before)} to delete since {ref}",
                    _DELETES,
                )
            )
    if (
        _get(new, ("allow_destructive",), False) is True
        and _get(old, ("allow_destructive",), False) is not True
    ):
        found.append(
            _warn(
                sync,
                ("allow_destructive",),
                f"allow_destructive turned on since {ref}",
                "review: deletes are now allowed for this sync",
            )
        )
    for name, fallback in _LIMIT_DEFAULTS.items():
        limit = ("limits", name)
        before, after = _get(old, limit, fallback), _get(new, limit, fallback)
        if not (_is_limit(before) and _is_limit(after)):
            continue  # an invalid value: validation reports it
        if before is not None and after is None:
            message = f"limits.{name} removed since {ref} (was {_shown(before)}; no limit now)"
        elif before is not None and after is not None and after > before:
            how = "" if _has(new, limit) else " (the default)"
            message = (
                f"limits.{name} raised from {_shown(before)} to {_shown(after)}{how} since {ref}"
            )
        else:
            continue
        hint = (
            "review: more rows may be rejected before the run fails"
            if name == "max_row_error_ratio"
            else _DELETES
        )
        found.append(
            _warn(
                sync,
                limit if _has(new, limit) else ("limits",),
                message,
                hint,
                field=f"limits.{name}",
            )
        )
    for key in ("name", "object"):
        path = ("destination", key)
        before, after = _get(old, path), _get(new, path)
        if before is not _UNSET and after is not _UNSET and before != after:
            found.append(
                _warn(
                    sync,
                    path,
                    f"destination.{key} changed from {_shown(before)} to {_shown(after)} since {ref}",
                    "review: records now go to another destination, and the state of the old one "
                    "decides what is sent",
                )
            )
    return found


# --- helpers ----------------------------------------------------------------------------------


def _get(data: Any, path: tuple[str, ...], default: Any = _UNSET) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def _has(data: Any, path: tuple[str, ...]) -> bool:
    return _get(data, path) is not _UNSET


def _is_limit(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shown(value: Any) -> str:
    if value is _UNSET or value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _warn(sync: Sync, path: Path_, message: str, hint: str, *, field: str | None = None) -> Problem:
    return Problem(
        sync.file,
        sync.document.line_of(path, key=True),
        field or ".".join(str(p) for p in path),
        message,
        hint,
        severity="warning",
    )


__all__ = ["changes_since"]
