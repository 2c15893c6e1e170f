"""`retl validate --connect`: check syncs against the live warehouse and destination.

The SQL runs with `LIMIT 0`, so nothing is read; every source column the sync uses must be in
its result, and the destination must accept the object, fields, key and action. Whatever fails,
even an unreachable server, becomes a Problem at the line to fix, never an exception. Messages
from drivers are cut to their first line and have secrets masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from reverse_etl.config.problems import Problem
from reverse_etl.config.project import Project, Sync, did_you_mean, in_block
from reverse_etl.errors import RetlError, RoleRefusedError
from reverse_etl.redact import redact
from reverse_etl.types import mode_action
from reverse_etl.warehouse.roles import check_role

if TYPE_CHECKING:  # both are imported when first needed: they pull in the database drivers
    from reverse_etl.destinations.base import Destination
    from reverse_etl.warehouse.base import Warehouse

_Failure = tuple[str, str | None]


def connect_checks(
    project: Project, syncs: Iterable[Sync], *, role: str | None = None
) -> list[Problem]:
    """Problems found by running each sync's SQL with LIMIT 0 (as `role`, which a warehouse's
    `roles` may refuse) and asking its destination to check the mapping. Warehouses and
    destinations are opened once each and always closed."""
    checker = _ConnectChecker(project, role)
    problems: list[Problem] = []
    try:
        for sync in syncs:
            problems.extend(checker.check(sync))
    finally:
        checker.close()
    return problems


class _ConnectChecker:
    def __init__(self, project: Project, role: str | None) -> None:
        self.project = project
        self.role = role
        # name -> an open connection, or (message, hint) saying why it could not be opened
        self.warehouses: dict[str, Warehouse | _Failure] = {}
        self.destinations: dict[str, Destination | _Failure] = {}
        # The source query's column types (name -> the warehouse's type name), per sync.
        self.source_types: dict[str, dict[str, str]] = {}

    def check(self, sync: Sync) -> list[Problem]:
        config, project_config = sync.config, self.project.config
        if config is None or sync.sql is None or project_config is None:
            return []
        problems: list[Problem] = []
        doc = sync.document
        block = project_config.warehouses.get(config.warehouse)
        refusal = self._refusal(config.warehouse, block.roles) if block is not None else None
        if refusal is not None:
            problems.append(doc.problem(("warehouse",), *refusal))
        elif block is not None and not self._broken("warehouses", config.warehouse):
            warehouse = self._warehouse(config.warehouse)
            if isinstance(warehouse, tuple):
                problems.append(doc.problem(("warehouse",), *warehouse))
            else:
                problems.extend(self._check_columns(sync, warehouse))
        name = config.destination.name
        if name in project_config.destinations and not self._broken("destinations", name):
            destination = self._destination(name)
            if isinstance(destination, tuple):
                problems.append(doc.problem(("destination", "name"), *destination))
            else:
                problems.extend(self._check_destination(sync, destination))
        return problems

    def close(self) -> None:
        for resource in [*self.warehouses.values(), *self.destinations.values()]:
            if not isinstance(resource, tuple):
                with contextlib.suppress(Exception):  # best effort: validation is done
                    resource.close()

    # --- warehouse --------------------------------------------------------------------------

    def _warehouse(self, name: str) -> Warehouse | _Failure:
        if name not in self.warehouses:
            from reverse_etl.warehouse import open_warehouse

            assert self.project.config is not None
            block = self.project.config.warehouses[name]
            try:
                self.warehouses[name] = open_warehouse(
                    name, block.url, self.project.root, query_timeout=block.query_timeout
                )
            except Exception as exc:
                self.warehouses[name] = self._failure(
                    exc, f"cannot connect to warehouse '{name}'", _reach_hint("warehouse")
                )
        return self.warehouses[name]

    def _check_columns(self, sync: Sync, warehouse: Warehouse) -> list[Problem]:
        config = sync.config
        assert config is not None and sync.sql is not None
        doc = sync.document
        try:
            described = warehouse.columns(sync.sql)
        except Exception as exc:
            where = ("source", "sql") if config.source.sql is not None else ("source", "file")
            message, hint = self._failure(
                exc,
                f"query on warehouse '{config.warehouse}' failed",
                "run the query in the warehouse's own client to see the whole error",
            )
            return [doc.problem(where, message, hint)]
        columns = [column.name for column in described]
        self.source_types[sync.name] = {column.name: column.type for column in described}
        known = set(columns)
        problems: list[Problem] = []

        def require(column: str, path: tuple[str | int, ...]) -> None:
            if column in known:
                return
            problems.append(
                doc.problem(
                    path,
                    f"column '{column}' is not in the source query's result",
                    _column_hint(column, columns),
                )
            )

        # The key column is reported once, on the primary_key line, even where it is mapped.
        for field, source in config.mapping.items():
            for column in dict.fromkeys(source.columns):
                if column != config.primary_key:
                    require(column, ("mapping", field))
        require(config.primary_key, ("primary_key",))
        if config.incremental is not None:
            require(config.incremental.column, ("incremental", "column"))
        return problems

    # --- destination ------------------------------------------------------------------------

    def _destination(self, name: str) -> Destination | _Failure:
        if name not in self.destinations:
            from reverse_etl.destinations import build_destination

            assert self.project.config is not None
            block = self.project.config.destinations[name]
            try:
                destination = build_destination(
                    name, {"type": block.type, **block.options()}, self.project.root
                )
                destination.open()
                self.destinations[name] = destination
            except Exception as exc:
                self.destinations[name] = self._failure(
                    exc, f"cannot connect to destination '{name}'", _reach_hint("destination")
                )
        return self.destinations[name]

    def _check_destination(self, sync: Sync, destination: Destination) -> list[Problem]:
        config = sync.config
        assert config is not None
        path = ("destination", "object")
        try:
            messages = destination.check(
                config.destination.object,
                list(config.mapping),
                sync.key_field(),
                mode_action(config.mode),
            )
        except Exception as exc:
            message, hint = self._failure(
                exc, f"destination '{config.destination.name}' cannot check the mapping", None
            )
            return [sync.document.problem(path, message, hint)]
        problems = [
            sync.document.problem(_field_path(message, config.mapping) or path, self._mask(message))
            for message in messages
        ]
        if not messages:
            problems += self._check_types(sync, destination)
        return problems

    def _check_types(self, sync: Sync, destination: Destination) -> list[Problem]:
        """Mapped source columns whose type the destination column could store altered (their
        records are rejected at run time: a warning) or can never hold (an error)."""
        from reverse_etl.destinations.tables import TableDestination

        config = sync.config
        types = self.source_types.get(sync.name)
        if config is None or types is None or not isinstance(destination, TableDestination):
            return []
        sources = {
            field: types[source.column]
            for field, source in config.mapping.items()
            if source.column is not None and source.column in types
        }
        try:
            risks = destination.type_risks(config.destination.object, sources)
        except Exception:  # the mapping check above already read the table: best effort
            return []
        hint = {
            "warning": "widen the column, or round/cast the value in the SQL",
            "error": "map a source column of a matching type, or cast it in the SQL",
        }
        return [
            dataclasses.replace(
                sync.document.problem(("mapping", field), self._mask(message), hint[severity]),
                severity="warning" if severity == "warning" else "error",
            )
            for field, severity, message in risks
        ]

    # --- helpers ----------------------------------------------------------------------------

    def _refusal(self, warehouse: str, roles: list[str] | None) -> _Failure | None:
        """Why the current role may not run SQL through this warehouse, or None."""
        try:
            check_role(warehouse, roles, self.role)
        except RoleRefusedError as exc:
            return exc.message, exc.hint
        return None

    def _broken(self, section: str, name: str) -> bool:
        """True when retl.yml already has an error in this block: connecting would only
        repeat it (or send a literal secret or an uninterpolated ${VAR} to a server)."""
        return any(
            p.severity == "error" and in_block(p, f"{section}.{name}")
            for p in self.project.problems
        )

    def _failure(self, exc: BaseException, context: str, hint: str | None) -> _Failure:
        """(message, hint) for an exception: retl's own errors already say what failed; a
        driver's exception gets `context` and its class name. Only the first line is kept."""
        if isinstance(exc, RetlError):
            return self._mask(_first_line(exc.message)), exc.hint or hint
        detail = _first_line(str(exc))
        detail = f"{exc.__class__.__name__}: {detail}" if detail else exc.__class__.__name__
        return self._mask(f"{context}: {detail}"), hint

    def _mask(self, text: str) -> str:
        return redact(text)


_FIELD_MESSAGE = re.compile(r"^(?:field|column) '(?P<name>[^']+)'")


def _field_path(message: str, mapping: Iterable[str]) -> tuple[str, str] | None:
    """The mapping line of the field a connector's check message is about (`field 'x' ...`,
    `column 'x' ...`), so the problem points at the line to fix; None for other messages."""
    match = _FIELD_MESSAGE.match(message)
    name = match.group("name") if match else None
    return ("mapping", name) if name is not None and name in mapping else None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _column_hint(column: str, columns: list[str]) -> str:
    close = did_you_mean(column, columns)
    if close is None:
        same_case = [c for c in columns if c.lower() == column.lower()]
        if same_case:
            return f"did you mean '{same_case[0]}'? (column names are case-sensitive)"
    if close is not None:
        return close
    listed = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
    return f"the query returns: {listed}" if columns else "the query returns no columns"


def _reach_hint(what: str) -> str:
    return f"check the {what}'s url and credentials in retl.yml and that the server is reachable"


__all__ = ["connect_checks"]
