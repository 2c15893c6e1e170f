"""Operations on a project's catalog and files: the connectors and destinations it can use
(`retl destinations`) and copying a sync file (`retl clone`).

Everything here raises `reverse_etl.errors` exceptions with a message fit for one screen; the
CLI only renders what these functions return.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reverse_etl.config import Problem, Project, load_project
from reverse_etl.config.models import SYNC_NAME
from reverse_etl.config.project import SYNCS_DIR, declared_names, did_you_mean
from reverse_etl.destinations.base import (
    Destination,
    FieldInfo,
    build_destination,
    connector_types,
)
from reverse_etl.errors import ConfigError, DestinationError, RetlError, UsageError

ACTION_ORDER = ("insert", "update", "upsert", "delete")


# --- destinations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorInfo:
    """A destination type retl.yml may name, with what it declares it can do."""

    type: str
    actions: tuple[str, ...]
    default_batch_size: int
    max_batch_size: int | None


@dataclass(frozen=True)
class DestinationInfo:
    """A destination configured in retl.yml."""

    name: str
    type: str


def list_connectors() -> list[ConnectorInfo]:
    """Every registered connector type, sorted by name."""
    found = []
    for type_name, cls in sorted(connector_types().items()):
        capabilities = cls.capabilities
        found.append(
            ConnectorInfo(
                type=type_name,
                actions=tuple(a for a in ACTION_ORDER if a in capabilities.actions),
                default_batch_size=capabilities.default_batch_size,
                max_batch_size=capabilities.max_batch_size,
            )
        )
    return found


def list_destinations(project: Project) -> list[DestinationInfo]:
    """The destinations of retl.yml that loaded, sorted by name (an invalid block is left out;
    `retl validate` reports it)."""
    if project.config is None:
        return []
    return [
        DestinationInfo(name=name, type=block.type)
        for name, block in sorted(project.config.destinations.items())
    ]


@contextmanager
def open_destination(project: Project, name: str) -> Iterator[Destination]:
    """The configured destination `name`, connected, closed on exit.

    Raises UsageError for an unknown name, ConfigError when its retl.yml block has errors, and
    DestinationError when it cannot be reached.
    """
    declared = declared_names(project.document, "destinations")
    block_problems = [
        p
        for p in project.problems
        if p.severity == "error"
        and (p.field == f"destinations.{name}" or p.field.startswith(f"destinations.{name}."))
    ]
    if project.config is None or (name in declared and name not in project.config.destinations):
        problems = block_problems or [p for p in project.problems if p.severity == "error"]
        raise ConfigError(
            f"destination '{name}' in retl.yml is invalid; run `retl validate`", list(problems)
        )
    if name not in project.config.destinations:
        known = sorted(project.config.destinations)
        hint = did_you_mean(name, known) or (
            "configured destinations: " + ", ".join(known)
            if known
            else "add one under destinations: in retl.yml"
        )
        raise UsageError(f"no destination named '{name}' in retl.yml", hint)
    if block_problems:
        raise ConfigError(
            f"destination '{name}' in retl.yml is invalid; run `retl validate`",
            list(block_problems),
        )
    block = project.config.destinations[name]
    destination = build_destination(name, {"type": block.type, **block.options()}, project.root)
    with _as_destination_error(f"cannot connect to destination '{name}'"):
        destination.open()
    try:
        yield destination
    finally:
        destination.close()


def destination_objects(project: Project, name: str) -> list[str]:
    """The objects (tables, files ...) destination `name` can write to."""
    with (
        open_destination(project, name) as destination,
        _as_destination_error(f"destination '{name}' cannot list its objects"),
    ):
        return sorted(destination.objects())


def object_fields(project: Project, name: str, object: str) -> list[FieldInfo]:
    """The fields of one object of destination `name`; DestinationError when it is missing."""
    with (
        open_destination(project, name) as destination,
        _as_destination_error(f"destination '{name}' cannot read the fields of {object}"),
    ):
        return destination.fields(object)


@contextmanager
def _as_destination_error(context: str) -> Iterator[None]:
    """A driver's exception becomes a DestinationError with its first line (secrets masked
    by DestinationError); retl's own errors pass through as they are."""
    try:
        yield
    except RetlError:
        raise
    except Exception as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        shown = f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
        raise DestinationError(
            f"{context}: {shown}",
            "check the destination's settings in retl.yml and that it is reachable",
        ) from exc


# --- clone -----------------------------------------------------------------------------------


class SyncFileExistsError(RetlError):
    """`retl clone` would overwrite an existing sync file."""


@dataclass
class CloneResult:
    """The sync file written by `clone_sync` and the new sync's validation problems."""

    name: str
    path: Path
    file: str
    overwritten: bool
    problems: list[Problem] = field(default_factory=list)

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
    with `destination.name`/`destination.object` replaced when given; then reload the project
    and return the new sync's problems. Refuses a bad name, or an existing file without `force`.
    """
    if source not in project.syncs:
        raise UsageError(f"no sync named '{source}'", did_you_mean(source, project.syncs))
    if not SYNC_NAME.match(new):
        raise UsageError(
            f"'{new}' is not a valid sync name",
            "lower-case letters, digits, '_' and '-', starting with a letter, digit or '_'",
        )
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
    )


def replace_scalars(text: str, file: str, values: dict[tuple[str, ...], str]) -> str:
    """`text` with the scalar at each path replaced by a value, everything else untouched.

    The YAML is composed (not loaded) so that each scalar's exact span is known; a path that
    is missing or not a scalar raises ConfigError naming the file.
    """
    if not values:
        return text
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML; fix it before cloning: {exc}") from None
    spans: list[tuple[int, int, str]] = []
    for path, value in values.items():
        node = _node_at(root, path)
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(
                f"{file} has no {'.'.join(path)} value to replace; fix it before cloning"
            )
        spans.append((node.start_mark.index, node.end_mark.index, _scalar(value)))
    for start, end, replacement in sorted(spans, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _node_at(node: yaml.Node | None, path: tuple[str, ...]) -> yaml.Node | None:
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next(
            (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None
        )
    return node


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


def _scalar(value: str) -> str:
    """`value` as a YAML string: plain when it reads back as the same string, else quoted."""
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


__all__ = [
    "CloneResult",
    "ConnectorInfo",
    "DestinationInfo",
    "SyncFileExistsError",
    "clone_sync",
    "destination_objects",
    "list_connectors",
    "list_destinations",
    "object_fields",
    "open_destination",
    "replace_scalars",
]
