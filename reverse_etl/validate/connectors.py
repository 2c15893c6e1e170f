"""Checks of a project against the installed connectors: known type, options, capabilities.

They need the destinations layer, so they run after `config.load_project`; their problems are
added to the project's and the syncs' lists, exactly where the static checks put theirs.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from reverse_etl.config.project import Project, Sync, did_you_mean, model_problems
from reverse_etl.destinations.base import Destination, connector_for, connector_names
from reverse_etl.types import mode_action


def check_connectors(project: Project) -> None:
    """Append the problems of every destination block and of every sync's object name, mode
    and batch size."""
    if project.config is None:
        return
    # Only the connectors the project names are imported (each brings its driver).
    known: dict[str, type[Destination] | None] = {}
    for block in project.config.destinations.values():
        if block.type not in known:
            known[block.type] = connector_for(block.type)
    _check_destinations(project, known)
    for sync in project.syncs.values():
        _check_sync(project, sync, known)


def _check_destinations(project: Project, known: dict[str, type[Destination] | None]) -> None:
    assert project.config is not None
    for name, block in project.config.destinations.items():
        cls = known.get(block.type)
        if cls is None:
            names = connector_names()
            project.problems.append(
                project.document.problem(
                    ("destinations", name, "type"),
                    f"unknown destination type '{block.type}'",
                    did_you_mean(block.type, names) or _known_types(names),
                )
            )
            continue
        try:
            cls.options_model.model_validate(block.options())
        except ValidationError as exc:
            project.problems.extend(
                model_problems(
                    cls.options_model, project.document, exc.errors(), ("destinations", name)
                )
            )


def _check_sync(project: Project, sync: Sync, known: dict[str, type[Destination] | None]) -> None:
    config, project_config = sync.config, project.config
    if config is None or project_config is None:
        return
    block = project_config.destinations.get(config.destination.name)
    cls = known.get(block.type) if block is not None else None
    if block is None or cls is None:
        return
    bad_object = cls.object_problem(config.destination.object)
    if bad_object is not None:
        sync.problems.append(sync.document.problem(("destination", "object"), *bad_object))
    mode_is_valid = not any(p.field == "mode" for p in sync.problems)  # else a stand-in
    if mode_is_valid and mode_action(config.mode) not in cls.capabilities.actions:
        sync.problems.append(
            sync.document.problem(
                ("mode",), f"destination type '{block.type}' does not support mode {config.mode}"
            )
        )
    deletes = "mode" if config.mode == "delete" else None
    if config.on_removed == "delete":
        deletes = "on_removed"
    if mode_is_valid and deletes is not None:
        try:
            problem = cls.delete_problem(cls.options_model.model_validate(block.options()))
        except ValidationError:
            problem = None  # reported at the destination block
        if problem is not None:
            sync.problems.append(sync.document.problem((deletes,), *problem))
    limit = cls.capabilities.max_batch_size
    if limit is not None and config.batch_size is not None and config.batch_size > limit:
        sync.problems.append(
            sync.document.problem(
                ("batch_size",),
                f"{config.batch_size} is above the {block.type} connector's limit of {limit}",
            )
        )


def _known_types(known: Iterable[str]) -> str:
    listed = ", ".join(sorted(known))
    return f"known types: {listed}" if listed else "no destination connectors are installed"
