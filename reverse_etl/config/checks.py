"""Checks that need more than one model: references, mapping rules, mode rules and secrets.

Checks against the installed connectors (types, options, capabilities) need the destinations
layer and live in `reverse_etl.validate.connectors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from reverse_etl.config.problems import Problem, format_path
from reverse_etl.config.project import (
    Project,
    Sync,
    declared_names,
    did_you_mean,
)
from reverse_etl.config.yamlio import YamlDocument, uses_env
from reverse_etl.redact import is_secret_key, url_password


def check_project(project: Project) -> None:
    """Append every cross-file problem to the project and its syncs."""
    _check_secrets(project.document, project.problems)
    if project.config is not None:
        state = project.config.state
        if state.backend == "warehouse" and state.warehouse not in project.config.warehouses:
            project.problems.append(
                project.document.problem(
                    ("state", "warehouse"),
                    "state.backend 'warehouse' needs state.warehouse naming a warehouse",
                    did_you_mean(str(state.warehouse), project.config.warehouses)
                    or _known("warehouses", project.config.warehouses),
                )
            )
    for sync in project.syncs.values():
        _check_secrets(sync.document, sync.problems)
        if sync.config is not None:
            _check_sync(project, sync)
    _check_dependency_cycles(project)


def _check_secrets(document: YamlDocument, problems: list[Problem]) -> None:
    for path, raw in document.raw.items():
        if not path or not isinstance(path[-1], str):
            continue
        # A sync's mapping keys are destination field names (`password: password_hash`).
        is_field_name = len(path) == 2 and path[0] == "mapping"
        if not is_field_name and is_secret_key(path[-1]) and raw and not uses_env(raw):
            problems.append(
                document.problem(
                    path,
                    f"literal secret in '{path[-1]}': secrets must come from the environment",
                    f"write {path[-1]}: ${{{_env_name(path)}}} and export that variable",
                )
            )
            continue
        password = url_password(raw)
        if password and not uses_env(password):
            problems.append(
                document.problem(
                    path,
                    "literal password in URL: secrets must come from the environment",
                    f"write the password as ${{{_env_name(path)}_PASSWORD}} or the whole URL as "
                    f"${{{_env_name(path)}}}",
                )
            )


def _env_name(path: tuple[str | int, ...]) -> str:
    words = [
        str(p)
        for p in path
        if isinstance(p, str) and p not in ("warehouses", "destinations", "alerts")
    ]
    return re.sub(r"[^A-Z0-9]+", "_", "_".join(words).upper()).strip("_") or "SECRET"


def _check_sync(project: Project, sync: Sync) -> None:
    config = sync.config
    assert config is not None
    doc, problems = sync.document, sync.problems
    project_config = project.config

    def add(
        path: tuple[str | int, ...], message: str, hint: str | None = None, key: bool = False
    ) -> None:
        problems.append(doc.problem(path, message, hint, key=key))

    if project_config is not None or project.document.data is not None:
        warehouses = declared_names(project.document, "warehouses")
        destinations = declared_names(project.document, "destinations")
        alerts = declared_names(project.document, "alerts")
        if config.warehouse not in warehouses:
            add(
                ("warehouse",),
                f"unknown warehouse '{config.warehouse}'",
                did_you_mean(config.warehouse, warehouses) or _known("warehouses", warehouses),
            )
        elif (
            project_config is not None
            and project_config.state.backend == "warehouse"
            and project_config.state.warehouse in warehouses
            and config.warehouse != project_config.state.warehouse
        ):
            add(
                ("warehouse",),
                f"state.backend 'warehouse' keeps state in warehouse "
                f"'{project_config.state.warehouse}', but this sync reads '{config.warehouse}': "
                "the diff runs in SQL where both are",
                f"read from '{project_config.state.warehouse}', or use state.backend: local",
            )
        if config.destination.name not in destinations:
            add(
                ("destination", "name"),
                f"unknown destination '{config.destination.name}'",
                did_you_mean(config.destination.name, destinations)
                or _known("destinations", destinations),
            )
        for index, alert in enumerate(config.alerts):
            if alert not in alerts:
                add(
                    ("alerts", index),
                    f"unknown alert channel '{alert}'",
                    did_you_mean(alert, alerts) or _known("alerts", alerts),
                )
    for index, after in enumerate(config.schedule.after):
        if after not in project.syncs:
            add(
                ("schedule", "after", index),
                f"unknown sync '{after}' in schedule.after",
                did_you_mean(after, project.syncs) or "name a file of syncs/ without .yml",
            )
        elif after == sync.name:
            add(("schedule", "after", index), "a sync cannot run after itself")

    key_field = sync.key_field()
    if config.mode in ("update", "upsert", "delete") and key_field is None:
        add(
            ("mapping",),
            f"primary key column '{config.primary_key}' is not mapped to any destination field",
            f"mode {config.mode} identifies records by it: add e.g. "
            f"`<destination_key>: {config.primary_key}` under mapping",
            key=True,
        )
    if config.on_removed == "delete" and key_field is None:
        add(
            ("on_removed",),
            f"on_removed: delete needs primary key column '{config.primary_key}' "
            "mapped to a destination field",
        )
    if project_config is not None and project_config.state.backend == "warehouse":
        block = project_config.warehouses.get(project_config.state.warehouse or "")
        engine = block.url.split(":", 1)[0].split("+", 1)[0] if block is not None else "duckdb"
        if engine != "duckdb":
            for name, source in config.mapping.items():
                used = _engine_dependent_filters(source.template)
                if used:
                    add(
                        ("mapping", name),
                        f"the {'/'.join(used)} filter is not portable: with state.backend "
                        f"warehouse the template runs in {engine}, whose Unicode rules differ "
                        "from the preview's (upper('straße'), lower('İ')), so the values sent "
                        "could differ from the ones shown",
                        f"map the column as is and change its case in the sync's SQL "
                        f"({'/'.join(f'{f}(column)' for f in used)}), where {engine} computes "
                        "it for the preview and the run alike",
                    )
    lowered: dict[str, str] = {}
    for name in config.mapping:
        if name.lower() in lowered:
            add(
                ("mapping", name),
                f"destination field '{name}' is mapped twice (also as '{lowered[name.lower()]}')",
                "field names differ only in case; keep one",
                key=True,
            )
        lowered[name.lower()] = name

    if config.mode == "delete" and not config.allow_destructive:
        add(
            ("mode",),
            "'delete' removes records from the destination and needs allow_destructive: true",
            "add `allow_destructive: true` to the sync once you mean it",
        )
    if config.on_removed == "delete" and not config.allow_destructive:
        add(
            ("on_removed",),
            "'delete' removes records from the destination and needs allow_destructive: true",
            "add `allow_destructive: true` to the sync, or use on_removed: ignore",
        )
    if config.on_removed == "delete" and config.mode == "delete":
        add(("on_removed",), "on_removed has no meaning in mode delete", "remove on_removed")
    if config.incremental is not None and config.on_removed == "delete":
        add(
            ("on_removed",),
            "'delete' cannot be used with incremental: an incremental read cannot see removed rows",
            "remove incremental, or use on_removed: ignore",
        )


def _engine_dependent_filters(template: str | None) -> list[str]:
    if template is None:
        return []
    from reverse_etl.config.templates import ENGINE_DEPENDENT_FILTERS, Placeholder, parse_template

    used = {
        name
        for part in parse_template(template)
        if isinstance(part, Placeholder)
        for name in part.filters
        if name in ENGINE_DEPENDENT_FILTERS
    }
    return sorted(used)


def _known(what: str, names: Any) -> str:
    listed = ", ".join(sorted(names))
    return (
        f"{what} defined in retl.yml: {listed}" if listed else f"no {what} are defined in retl.yml"
    )


def _check_dependency_cycles(project: Project) -> None:
    graph = {
        name: [a for a in sync.config.schedule.after if a in project.syncs and a != name]
        for name, sync in project.syncs.items()
        if sync.config is not None
    }
    for start in graph:
        for cycle in _cycles_from(start, graph):
            sync = project.syncs[start]
            sync.problems.append(
                sync.document.problem(
                    ("schedule", "after"),
                    "dependency cycle: " + " -> ".join(cycle),
                    "remove one of the after: links",
                )
            )
            break


def _cycles_from(start: str, graph: dict[str, list[str]]) -> Iterator[list[str]]:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                yield [*path, start]
                return
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))


__all__ = ["check_project", "format_path"]
