"""The connectors and destinations a project can use (`retl destinations`): types, objects and
fields, each call raising `reverse_etl.errors` exceptions fit for one screen."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from reverse_etl.config import Project
from reverse_etl.config.project import declared_names, did_you_mean
from reverse_etl.destinations.base import (
    Destination,
    FieldInfo,
    build_destination,
    connector_types,
)
from reverse_etl.errors import ConfigError, DestinationError, RetlError, UsageError

ACTION_ORDER = ("insert", "update", "upsert", "delete")


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


_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:)[^@/\s]+@")


@contextmanager
def _as_destination_error(context: str) -> Iterator[None]:
    """A driver's exception becomes a DestinationError with its first line (URL passwords
    masked); retl's own errors pass through as they are."""
    try:
        yield
    except RetlError:
        raise
    except Exception as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        detail = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", detail)
        shown = f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
        raise DestinationError(
            f"{context}: {shown}",
            "check the destination's settings in retl.yml and that it is reachable",
        ) from exc


__all__ = [
    "ConnectorInfo",
    "DestinationInfo",
    "destination_objects",
    "list_connectors",
    "list_destinations",
    "object_fields",
    "open_destination",
]
