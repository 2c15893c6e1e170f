"""What changed in a project since a git ref: `validate --base` and `plan --changed-since`.

`changes_since` (`retl validate --base GIT_REF`) compares each sync file with its version at
the ref (`git show REF:path`); a new destructive sync, a switch to deleting,
`allow_destructive` turned on, a delete or error limit raised or removed, a new primary_key
(which re-keys the state) or a new destination become warnings at the line of the key in the
new file. Warnings never fail validation.

`changed_syncs` (`retl plan --changed-since GIT_REF`) picks the syncs whose sync file, SQL file,
or destination or warehouse block in retl.yml changed, and says in words what changed (for the
pull-request comment). A bad ref or a project outside git is a UsageError for both.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverse_etl.config.models import Limits
from reverse_etl.config.problems import Problem
from reverse_etl.config.project import PROJECT_FILE, Project, Sync
from reverse_etl.config.yamlio import Path_, load_yaml
from reverse_etl.git import changed_since, file_at, repository_at_ref

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
    before, after = _get(old, ("primary_key",)), _get(new, ("primary_key",))
    if before is not _UNSET and after is not _UNSET and before != after:
        found.append(
            _warn(
                sync,
                ("primary_key",),
                f"primary_key changed from {_shown(before)} to {_shown(after)} since {ref}",
                f"review: the state is keyed by {_shown(before)}: every row counts as new, and "
                "every record delivered before looks removed (deleted with on_removed: delete)",
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
    if isinstance(value, dict | list):
        text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 1] + "…"


def _warn(sync: Sync, path: Path_, message: str, hint: str, *, field: str | None = None) -> Problem:
    return Problem(
        sync.file,
        sync.document.line_of(path, key=True),
        field or ".".join(str(p) for p in path),
        message,
        hint,
        severity="warning",
    )


# --- plan --changed-since ----------------------------------------------------------------------

# Keys described by their own rules below; every other key of a sync file is compared as a value.
_DESCRIBED = ("description", "mode", "on_removed", "mapping", "source", "destination", "warehouse")
_SHOWN_MAX = 60
# What a missing key means, so that `paused false → true` reads as it does in the file.
_DEFAULTS: dict[str, Any] = {"allow_destructive": False, "paused": False, "schedule": "manual"}


@dataclass(frozen=True)
class SyncChange:
    """How one sync differs from its version at the ref, for people reading a pull request."""

    sync: str
    new: bool
    # Why the sync was picked: "sync file", "SQL file sql/a.sql", "destination app_db in retl.yml".
    reasons: list[str] = field(default_factory=list)
    # The changes in words: "mode upsert → delete", "mapping: + phone, − fax", "SQL changed ...".
    changes: list[str] = field(default_factory=list)
    # The change makes the sync delete where it did not (mode or on_removed now delete).
    destructive: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "new": self.new,
            "reasons": list(self.reasons),
            "changes": list(self.changes),
            "destructive": self.destructive,
        }


@dataclass(frozen=True)
class ChangeSet:
    """The syncs whose files changed since `ref` (name order), how, and the syncs removed."""

    ref: str
    syncs: list[Sync]
    changes: dict[str, SyncChange]
    removed: list[str] = field(default_factory=list)


def changed_syncs(project: Project, ref: str, syncs: Iterable[Sync] | None = None) -> ChangeSet:
    """The syncs (of `syncs`, all by default) whose sync file, SQL file, or destination or
    warehouse block in retl.yml differ from `ref`, committed or not; UsageError for a bad ref."""
    top = repository_at_ref(project.root, ref)
    changed = changed_since(project.root, ref)
    old_project = _old_yaml(top, ref, project.root / PROJECT_FILE, PROJECT_FILE)
    new_project = project.document.data if isinstance(project.document.data, dict) else {}
    candidates = project.select() if syncs is None else list(syncs)
    picked: list[Sync] = []
    changes: dict[str, SyncChange] = {}
    for sync in sorted(candidates, key=lambda s: s.name):
        reasons = _reasons(sync, changed, old_project, new_project)
        if reasons:
            picked.append(sync)
            changes[sync.name] = _describe(top, ref, sync, reasons, old_project, new_project)
    return ChangeSet(ref, picked, changes, _removed_syncs(project, changed))


def _reasons(
    sync: Sync, changed: set[Path], old_project: dict[str, Any], new_project: dict[str, Any]
) -> list[str]:
    reasons = []
    if _resolved(sync.path) in changed:
        reasons.append("sync file")
    if sync.sql_path is not None and _resolved(sync.sql_path) in changed:
        reasons.append(f"SQL file {sync.config.source.file if sync.config else sync.sql_path}")
    for section, name in _blocks(sync):
        if _get(old_project, (section, name)) != _get(new_project, (section, name)):
            reasons.append(f"{section[:-1]} {name} in {PROJECT_FILE}")
    return reasons


def _blocks(sync: Sync) -> list[tuple[str, str]]:
    """The retl.yml blocks the sync uses: ("destinations", name), ("warehouses", name)."""
    data = sync.document.data if isinstance(sync.document.data, dict) else {}
    found = []
    destination = _get(data, ("destination", "name"))
    if isinstance(destination, str):
        found.append(("destinations", destination))
    warehouse = _get(data, ("warehouse",))
    if isinstance(warehouse, str):
        found.append(("warehouses", warehouse))
    return found


def _describe(
    top: Path,
    ref: str,
    sync: Sync,
    reasons: list[str],
    old_project: dict[str, Any],
    new_project: dict[str, Any],
) -> SyncChange:
    new = sync.document.data if isinstance(sync.document.data, dict) else {}
    old_text = file_at(top, ref, sync.path)
    words: list[str] = []
    for section, name in _blocks(sync):
        before, after = _get(old_project, (section, name)), _get(new_project, (section, name))
        if before != after:
            words.append(_block_change(section[:-1], name, before, after))
    if old_text is None:
        words.insert(0, f"new sync (not in {ref})")
        destructive = "delete" in (_get(new, ("mode",)), _get(new, ("on_removed",)))
        return SyncChange(sync.name, True, reasons, words, destructive)
    loaded = load_yaml(old_text, sync.file, os.environ).data
    old = loaded if isinstance(loaded, dict) else {}
    destructive = False
    for key, default in (("mode", None), ("on_removed", "ignore")):
        before, after = _get(old, (key,), default), _get(new, (key,), default)
        if before != after:
            words.append(f"{key} {_shown(before)} → {_shown(after)}")
            destructive = destructive or (after == "delete" and before != "delete")
    words.extend(_mapping_changes(_get(old, ("mapping",), {}), _get(new, ("mapping",), {})))
    sql = _shown_sql_change(top, ref, sync, old, new)
    if sql is not None:
        words.append(sql)
    for key in ("name", "object"):
        before, after = _get(old, ("destination", key)), _get(new, ("destination", key))
        if before != after:
            words.append(f"destination.{key} {_shown(before)} → {_shown(after)}")
    before, after = _get(old, ("warehouse",)), _get(new, ("warehouse",))
    if before != after:
        words.append(f"warehouse {_shown(before)} → {_shown(after)}")
    for key in sorted(set(old) | set(new), key=_key_order(new, old)):
        if key in _DESCRIBED:
            continue
        default = _DEFAULTS.get(key, _UNSET)
        words.extend(_value_changes((key,), _get(old, (key,), default), _get(new, (key,), default)))
    if _get(old, ("description",)) != _get(new, ("description",)):
        words.append("description changed")
    if not words:
        words.append("no setting changed (comments or formatting only)")
    return SyncChange(sync.name, False, reasons, words, destructive)


def _block_change(kind: str, name: str, before: Any, after: Any) -> str:
    """`destination app_db changed in retl.yml (url, create_tables)`: keys only, never values
    (a block holds credentials)."""
    if before is _UNSET:
        return f"{kind} {name} is new in {PROJECT_FILE}"
    if after is _UNSET:
        return f"{kind} {name} was removed from {PROJECT_FILE}"
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k, _UNSET) != new.get(k, _UNSET)]
    listed = f" ({', '.join(str(k) for k in keys)})" if keys else ""
    return f"{kind} {name} changed in {PROJECT_FILE}{listed}"


def _mapping_changes(old: Any, new: Any) -> list[str]:
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    added = [k for k in new if k not in old]
    removed = [k for k in old if k not in new]
    words = []
    if added or removed:
        parts = [f"+ {k}" for k in added] + [f"− {k}" for k in removed]
        words.append("mapping: " + ", ".join(parts))
    for name in new:
        if name in old and old[name] != new[name]:
            words.append(f"mapping.{name} {_shown(old[name])} → {_shown(new[name])}")
    return words


def _shown_sql_change(
    top: Path, ref: str, sync: Sync, old: dict[str, Any], new: dict[str, Any]
) -> str | None:
    """`SQL changed (sql/a.sql: +3 −1 lines)`, or None when the SQL is the same."""
    if not old:
        return None
    before = _old_sql(top, ref, sync, old)
    after = sync.sql
    if before is not None and after is not None and before.strip() == after.strip():
        return None
    if after is None:
        return None  # the SQL cannot be read now: validation reports it
    where = _get(new, ("source", "file"))
    label = str(where) if isinstance(where, str) else "inline"
    if before is None:
        return f"SQL changed ({label}; not readable at {ref})"
    diff = difflib.ndiff(before.strip().splitlines(), after.strip().splitlines())
    plus = minus = 0
    for line in diff:
        plus += line.startswith("+ ")
        minus += line.startswith("- ")
    was = _get(old, ("source", "file"))
    moved = ""
    if was != where:
        moved = f", was {was if isinstance(was, str) else 'inline'}"
    return f"SQL changed ({label}: +{plus} −{minus} lines{moved})"


def _old_sql(top: Path, ref: str, sync: Sync, old: dict[str, Any]) -> str | None:
    inline = _get(old, ("source", "sql"))
    if isinstance(inline, str):
        return inline
    file = _get(old, ("source", "file"))
    if not isinstance(file, str):
        return None
    for folder in (sync.path.parent.parent, sync.path.parent):
        text = file_at(top, ref, folder / file)
        if text is not None:
            return text
    return None


def _value_changes(path: tuple[str, ...], before: Any, after: Any) -> list[str]:
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in dict.fromkeys([*after, *before]):
            found.extend(
                _value_changes((*path, str(key)), before.get(key, _UNSET), after.get(key, _UNSET))
            )
        return found
    return [f"{'.'.join(path)} {_shown(before)} → {_shown(after)}"]


def _removed_syncs(project: Project, changed: set[Path]) -> list[str]:
    """Sync files that existed at the ref and are gone now (git lists them as changed)."""
    folder = _resolved(project.root / "syncs")
    return [
        path.stem
        for path in sorted(changed)
        if path.parent == folder
        and path.suffix in (".yml", ".yaml")
        and not path.exists()
        and path.stem not in project.syncs
    ]


def _old_yaml(top: Path, ref: str, path: Path, file: str) -> dict[str, Any]:
    text = file_at(top, ref, path)
    data = load_yaml(text, file, os.environ).data if text is not None else None
    return data if isinstance(data, dict) else {}


def _key_order(*documents: dict[str, Any]) -> Any:
    order = {k: i for i, k in enumerate(dict.fromkeys(k for d in documents for k in d))}
    return lambda key: order.get(key, len(order))


def _resolved(path: Path) -> Path:
    return path.resolve()  # as `git.changed_since` lists them


__all__ = ["ChangeSet", "SyncChange", "changed_syncs", "changes_since"]
