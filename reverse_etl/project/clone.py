"""`retl clone`: copy a sync file, comments and layout kept, e.g. onto a sandbox destination."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reverse_etl.config import Problem, Project
from reverse_etl.config.models import sync_name_problem
from reverse_etl.config.project import SYNCS_DIR, did_you_mean
from reverse_etl.errors import ConfigError, RetlError, SyncFileExistsError, UsageError
from reverse_etl.validate import load_project


@dataclass
class CloneResult:
    """The sync file written by `clone_sync` and the new sync's validation problems."""

    name: str
    path: Path
    file: str
    overwritten: bool
    problems: list[Problem] = field(default_factory=list)
    schedule_was: str | None = None
    """The original's schedule when it was not manual: a copy starts `schedule: manual` so that
    `retl run --all` does not pick it up before someone decides it should."""

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def clone_sync(
    project: Project,
    source: str,
    new: str,
    *,
    destination: str | None = None,
    object: str | None = None,
    force: bool = False,
) -> CloneResult:
    """Write `syncs/<new>.yml` as a copy of sync `source`'s file, comments and layout kept,
    with `destination.name`/`destination.object` replaced when given and the schedule set to
    manual; then reload the project and return the new sync's problems. Refuses a bad name, or an
    existing file without `force`.
    """
    if source not in project.syncs:
        raise UsageError(f"no sync named '{source}'", did_you_mean(source, project.syncs))
    bad_name = sync_name_problem(new)
    if bad_name is not None:
        raise UsageError(*bad_name)
    original = project.syncs[source]
    if new == source:
        raise UsageError(f"'{new}' is the sync being cloned", "give the copy another name")
    folder = project.root / SYNCS_DIR
    target = folder / f"{new}{original.path.suffix}"
    existing = [p for p in (folder / f"{new}.yml", folder / f"{new}.yaml") if p.exists()]
    if existing and not force:
        raise SyncFileExistsError(
            f"{project.relative(existing[0])} already exists",
            "pick another name, or pass --force to overwrite it",
        )
    if any(p != target for p in existing):
        # syncs/new.yaml next to a new syncs/new.yml would define the sync twice
        target = existing[0]
    try:
        text = original.path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {original.file}: {exc.strerror or exc}") from None
    replacements: dict[tuple[str, ...], str] = {}
    if destination is not None:
        replacements[("destination", "name")] = destination
    if object is not None:
        replacements[("destination", "object")] = object
    schedule_was = _schedule_of(text)
    if schedule_was is not None:
        replacements[("schedule",)] = "manual"
    text = replace_scalars(text, original.file, replacements)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RetlError(f"cannot write {project.relative(target)}: {exc.strerror or exc}") from None

    reloaded = load_project(project.root)
    sync = reloaded.syncs.get(new)
    problems = list(sync.problems) if sync is not None else []
    problems.extend(p for p in reloaded.problems if p.file == reloaded.relative(target))
    return CloneResult(
        name=new,
        path=target,
        file=reloaded.relative(target),
        overwritten=bool(existing),
        problems=problems,
        schedule_was=schedule_was,
    )


def replace_scalars(text: str, file: str, values: dict[tuple[str, ...], str]) -> str:
    """`text` with the value at each path replaced by a scalar, everything else untouched.

    The YAML is composed (not loaded) so that each value's exact span is known; a collection
    value (`schedule: {after: [a]}`) is replaced as a whole. A missing path raises ConfigError
    naming the file.
    """
    if not values:
        return text
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML; fix it before cloning: {exc}") from None
    spans: list[tuple[int, int, str]] = []
    for path, value in values.items():
        entry = _entry_at(root, path)
        if entry is None:
            raise ConfigError(
                f"{file} has no {'.'.join(path)} value to replace; fix it before cloning"
            )
        key, node = entry
        if isinstance(node, yaml.ScalarNode):
            spans.append((node.start_mark.index, node.end_mark.index, _scalar(value)))
        else:  # from the key's end, so that a block collection's own lines go too
            span = text[key.end_mark.index : node.end_mark.index]
            trailing = span[len(span.rstrip()) :]
            spans.append((key.end_mark.index, node.end_mark.index, f": {_scalar(value)}{trailing}"))
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _schedule_of(text: str) -> str | None:
    """The file's schedule as written, or None when it is absent or manual."""
    try:
        entry = _entry_at(yaml.compose(text, Loader=yaml.SafeLoader), ("schedule",))
    except yaml.YAMLError:
        return None  # replace_scalars reports the broken file
    if entry is None:
        return None
    node = entry[1]
    if isinstance(node, yaml.ScalarNode):
        return None if node.value in ("manual", "", "null", "~") else str(node.value)
    start, end = node.start_mark.index, node.end_mark.index
    return " ".join(text[start:end].split())


def _entry_at(node: yaml.Node | None, path: tuple[str, ...]) -> tuple[yaml.Node, yaml.Node] | None:
    """The key and value nodes at `path` in a composed document, or None when it is missing."""
    entry = None
    for name in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        entry = next(
            ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name),
            None,
        )
        if entry is None:
            return None
        node = entry[1]
    return entry


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


def _scalar(value: str) -> str:
    """`value` as a YAML string: plain when it reads back as the same string, else quoted."""
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


__all__ = [
    "CloneResult",
    "clone_sync",
    "replace_scalars",
]
