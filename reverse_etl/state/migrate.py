"""`retl state migrate`: copy a project's whole state from one place to another (local,
postgres, warehouse), verify it, and leave the source untouched.

What moves: every sync's snapshots, kept-aside targets and mode families with their meta
(state/transfer.py, in bulk), and the run log, dead letters, records in doubt and pauses
(merged by their keys: a run id is never there twice). Every sync's lock is held in the source
for the copy. A sync whose state already exists in the destination is left alone when it is
identical ("already there") and refused when it differs, unless `force` replaces it. After the
copy both sides are compared: per kept state the row count and an order-independent digest of
`(key, hash, dest_id)`, and every operational row.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reverse_etl.config import Project
from reverse_etl.config.models import StateConfig
from reverse_etl.errors import ConfigError, StateError, UsageError
from reverse_etl.redact import mask_url
from reverse_etl.state.database import StateDatabase
from reverse_etl.state.layout import StateLayout
from reverse_etl.state.store import StateStore, StoreKind, open_store
from reverse_etl.state.transfer import FileSnapshots, KeptState, SnapshotPlace, TableSnapshots

STATE_URL_VARIABLE = "RETL_STATE_URL"
COMMAND = "retl state migrate"

# The operational tables and the columns that identify a row (the same on SQLite and
# PostgreSQL: state/database.py and state/postgres.py).
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "runs": (
        ("id",),
        (
            "id",
            "sync",
            "status",
            "trigger",
            "started_at",
            "finished_at",
            "git_commit",
            "git_dirty",
            "config_hash",
            "counts",
            "error",
            "message",
            "planned",
            "state_records",
        ),
    ),
    "dead_letters": (
        ("sync", "key"),
        (
            "sync",
            "key",
            "operation",
            "record",
            "error",
            "run_id",
            "first_failed_at",
            "last_failed_at",
            "attempts",
        ),
    ),
    "in_doubt": (("sync", "key"), ("sync", "key", "operation", "reason", "run_id", "since")),
    "pauses": (("sync",), ("sync", "paused_by", "paused_at", "reason")),
}
TABLE_NAMES = {
    "runs": "run log",
    "dead_letters": "dead letters",
    "in_doubt": "records in doubt",
    "pauses": "pauses",
}

Outcome = Literal["copied", "already there", "replaced", "mismatch", "nothing to copy"]


@dataclass(frozen=True)
class StatePlace:
    """A place state can live: `backend` as retl.yml's `state.backend` says it."""

    backend: StoreKind
    url: str | None = None
    warehouse: str | None = None
    schema: str = "retl_state"
    #: How retl.yml should name `url` (`${RETL_STATE_URL}`, or the URL when it holds no
    #: password); None: as retl.yml names it already.
    url_text: str | None = None

    @classmethod
    def from_config(cls, project: Project) -> StatePlace:
        state = project.config.state if project.config is not None else StateConfig()
        return cls(state.backend, state.url, state.warehouse, state.schema_)

    def config(self) -> StateConfig:
        values: dict[str, Any] = {"backend": self.backend, "schema": self.schema}
        if self.backend == "postgres":
            values["url"] = self.url
        if self.backend == "warehouse":
            values["warehouse"] = self.warehouse
        return StateConfig.model_validate(values)

    def retl_yml(self) -> str:
        """The `state:` block of retl.yml that names this place (YAML lines, no password)."""
        parts = [f"backend: {self.backend}"]
        if self.backend == "postgres":
            parts.append(f"url: {self.url_text or '${' + STATE_URL_VARIABLE + '}'}")
        if self.backend == "warehouse":
            parts.append(f"warehouse: {self.warehouse}")
        if self.schema != "retl_state" and self.backend != "local":
            parts.append(f"schema: {self.schema}")
        return "state:\n" + "".join(f"  {part}\n" for part in parts)

    def same_as(self, other: StatePlace) -> bool:
        return self.backend == other.backend and (
            self.backend == "local"
            or (self.url, self.warehouse, self.schema) == (other.url, other.warehouse, other.schema)
        )


def requested_place(
    project: Project,
    backend: str,
    *,
    url: str | None = None,
    warehouse: str | None = None,
    schema: str | None = None,
    environ: dict[str, str] | None = None,
) -> StatePlace:
    """The place `--to`/`--from` names with its options; `url` defaults to $RETL_STATE_URL,
    `warehouse` to state.warehouse or the project's only warehouse."""
    if backend not in ("local", "postgres", "warehouse"):
        raise UsageError(
            f"'{backend}' is not a place state can live",
            hint="use one of: local, postgres, warehouse",
        )
    config = project.config
    current = config.state if config is not None else StateConfig()
    chosen_schema = schema or current.schema_
    if backend == "local":
        if url or warehouse:
            raise UsageError("local state takes neither --url nor --warehouse")
        return StatePlace("local")
    if backend == "postgres":
        if warehouse:
            raise UsageError("--warehouse is for the warehouse backend; postgres takes --url")
        env_url = (environ or {}).get(STATE_URL_VARIABLE)
        chosen = url or env_url or (current.url if current.backend == "postgres" else None)
        if not chosen:
            raise UsageError(
                "state in postgres needs the database's URL",
                hint=f"pass --url postgresql://user@host/db, or set {STATE_URL_VARIABLE}",
            )
        text: str | None = None
        if url and mask_url(url) == url:
            text = url  # no password in it: retl.yml may name it as it is
        elif url and url != env_url:
            text = "${" + STATE_URL_VARIABLE + "}"
        return StatePlace("postgres", url=chosen, schema=chosen_schema, url_text=text)
    if url:
        raise UsageError("--url is for the postgres backend; warehouse takes --warehouse")
    names = sorted(config.warehouses) if config is not None else []
    name = warehouse or current.warehouse or (names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise UsageError(
            f"no warehouse '{name}' in retl.yml" if name else "which warehouse keeps the state?",
            hint=f"pass --warehouse NAME (one of: {', '.join(names) or 'none defined'})",
        )
    return StatePlace("warehouse", warehouse=name, schema=chosen_schema)


# ---------------------------------------------------------------------------------- report


@dataclass
class KeptReport:
    """One kept state of a sync as found on both sides after the copy."""

    slot: str
    current: bool
    records: int
    digest: str
    destination_records: int | None = None
    destination_digest: str | None = None

    @property
    def matches(self) -> bool:
        return (self.records, self.digest) == (self.destination_records, self.destination_digest)

    def to_json(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "current": self.current,
            "records": self.records,
            "digest": self.digest,
            "destination_records": self.destination_records,
            "destination_digest": self.destination_digest,
            "matches": self.matches,
        }


@dataclass
class SyncReport:
    sync: str
    outcome: Outcome
    kept: list[KeptReport] = field(default_factory=list)
    problem: str | None = None

    @property
    def records(self) -> int:
        return sum(k.records for k in self.kept)

    def to_json(self) -> dict[str, object]:
        return {
            "sync": self.sync,
            "outcome": self.outcome,
            "records": self.records,
            "kept": [k.to_json() for k in self.kept],
            "problem": self.problem,
        }


@dataclass
class TableReport:
    """An operational table: rows in the source, how many were copied, found equal after."""

    table: str
    rows: int
    copied: int
    verified: int
    #: False when source and destination share the table (nothing to copy).
    moved: bool = True

    @property
    def name(self) -> str:
        return TABLE_NAMES[self.table]

    @property
    def outcome(self) -> Outcome:
        if self.verified != self.rows:
            return "mismatch"
        if not self.rows:
            return "nothing to copy"
        return "copied" if self.copied else "already there"

    def to_json(self) -> dict[str, object]:
        return {
            "table": self.table,
            "rows": self.rows,
            "copied": self.copied,
            "verified": self.verified,
            "moved": self.moved,
            "outcome": self.outcome,
        }


@dataclass
class MigrationReport:
    source: StatePlace
    destination: StatePlace
    source_where: str
    destination_where: str
    syncs: list[SyncReport]
    tables: list[TableReport]
    #: The `state:` line retl.yml needs now; None when it says it already.
    retl_yml: str | None

    @property
    def ok(self) -> bool:
        return all(s.outcome != "mismatch" for s in self.syncs) and all(
            t.outcome != "mismatch" for t in self.tables
        )

    def mismatches(self) -> list[str]:
        found = [f"{s.sync}: {s.problem}" for s in self.syncs if s.outcome == "mismatch"]
        found += [
            f"{t.name}: {t.verified} of {t.rows} row(s) found equal in the destination"
            for t in self.tables
            if t.outcome == "mismatch"
        ]
        return found

    def to_json(self) -> dict[str, object]:
        return {
            "from": {"backend": self.source.backend, "where": self.source_where},
            "to": {"backend": self.destination.backend, "where": self.destination_where},
            "ok": self.ok,
            "syncs": [s.to_json() for s in self.syncs],
            "tables": [t.to_json() for t in self.tables],
            "retl_yml": self.retl_yml,
            "source_untouched": True,
            "mismatches": self.mismatches(),
        }


# ---------------------------------------------------------------------------------- places


@dataclass
class _Opened:
    place: StatePlace
    store: StateStore
    snapshots: SnapshotPlace
    #: What makes two places the same: (snapshots, operational tables).
    identity: tuple[tuple[str, ...], tuple[str, ...]]


def _project_at(project: Project, place: StatePlace) -> Project:
    assert project.config is not None
    config = project.config.model_copy(update={"state": place.config()})
    return dataclasses.replace(project, config=config)


def _conninfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0].lower()}://{rest}"


@contextlib.contextmanager
def _opened(project: Project, place: StatePlace) -> Iterator[_Opened]:
    from reverse_etl.state.postgres import _server
    from reverse_etl.state.postgres_snapshots import StateDatabaseSession
    from reverse_etl.warehouse.sessions import open_session

    layout = StateLayout.for_project(Path(project.root))
    store = open_store(_project_at(project, place))
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        if store.kind == "local":
            ops: tuple[str, ...] = ("files", str(layout.database.resolve()))
        else:
            url = place.url if place.backend == "postgres" else None
            ops = ("postgres", _conninfo(url or _warehouse_url(project, place)), place.schema)
        snapshots: SnapshotPlace
        if place.backend == "local":
            snapshots = FileSnapshots(layout.snapshots, "local (.retl/)")
            where: tuple[str, ...] = ("files", str(layout.snapshots.resolve()))
        elif place.backend == "postgres":
            assert place.url is not None
            session = StateDatabaseSession(place.url)
            snapshots = TableSnapshots(session, place.schema, _server(place.url))
            where = ("postgres", _conninfo(place.url), place.schema)
        else:
            assert project.config is not None and place.warehouse is not None
            block = project.config.warehouses[place.warehouse]
            wsession = open_session(place.warehouse, block.url, project.root, block.query_timeout)
            url = _conninfo(block.url)
            kind = "postgres" if url.startswith(("postgres://", "postgresql://")) else "file"
            name = f"warehouse '{place.warehouse}'"
            if kind == "postgres":
                name += f" ({_server(block.url)})"
            snapshots = TableSnapshots(wsession, place.schema, name)
            where = (kind, url, place.schema)
        stack.callback(snapshots.close)
        yield _Opened(place, store, snapshots, (where, ops))


def _warehouse_url(project: Project, place: StatePlace) -> str:
    assert project.config is not None
    block = project.config.warehouses.get(place.warehouse or "")
    if block is None:
        raise ConfigError(f"no warehouse '{place.warehouse}' in retl.yml")
    return block.url


def _where(opened: _Opened) -> str:
    snapshots, store = opened.snapshots.where, opened.store.where
    return snapshots if snapshots == store else f"{snapshots}; run log: {store}"


# ---------------------------------------------------------------------------------- migrate


def migrate(
    project: Project,
    place: StatePlace,
    *,
    direction: Literal["to", "from"] = "to",
    force: bool = False,
) -> MigrationReport:
    """Copy all state from retl.yml's place to `place` (`to`), or from `place` into retl.yml's
    (`from`), verified; raises StateError (nothing copied) on a conflict without `force`, a
    held lock, or one place given twice."""
    configured = StatePlace.from_config(project)
    source, destination = (configured, place) if direction == "to" else (place, configured)
    if source.same_as(destination):
        raise UsageError(
            f"state is already kept in {source.backend} there: source and destination are the "
            "same place",
            hint="name another place with --to (or --from)",
        )
    with _opened(project, source) as src, _opened(project, destination) as dst:
        if src.identity == dst.identity:
            raise UsageError(
                f"{_where(src)} and {_where(dst)} are the same place: nothing to migrate",
                hint="name another place with --to (or --from)",
            )
        syncs = src.snapshots.syncs()
        with _locks(src.store, sorted(set(syncs) | set(project.syncs))):
            sync_reports = _copy_snapshots(src.snapshots, dst.snapshots, syncs, force)
            if src.identity[1] == dst.identity[1]:
                tables = [_shared_table(src.store.database(), t) for t in TABLES]
            else:
                tables = _copy_tables(src.store.database(), dst.store.database())
        configured_now = StatePlace.from_config(project)
        return MigrationReport(
            source=source,
            destination=destination,
            source_where=_where(src),
            destination_where=_where(dst),
            syncs=sync_reports,
            tables=tables,
            retl_yml=None if destination.same_as(configured_now) else destination.retl_yml(),
        )


@contextlib.contextmanager
def _locks(store: StateStore, syncs: Sequence[str]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for sync in syncs:
            stack.enter_context(store.lock(sync, COMMAND))
        yield


def _summary(states: list[KeptState]) -> list[tuple[object, ...]]:
    return sorted(
        (s.slot, s.current, s.target, sorted(s.meta.items()), s.records, s.digest()) for s in states
    )


def _copy_snapshots(
    source: SnapshotPlace, destination: SnapshotPlace, syncs: list[str], force: bool
) -> list[SyncReport]:
    planned: list[tuple[str, list[KeptState], Outcome]] = []
    conflicts: list[str] = []
    for sync in syncs:
        states = source.read(sync)
        there = destination.read(sync)
        if not there:
            planned.append((sync, states, "copied"))
        elif _summary(there) == _summary(states):
            planned.append((sync, states, "already there"))
        else:
            conflicts.append(sync)
            planned.append((sync, states, "replaced"))
    if conflicts and not force:
        raise StateError(
            f"{destination.where} already holds other state of {', '.join(conflicts)}: "
            "nothing was copied",
            hint="migrate again with --force to replace it with the source's state",
        )
    reports: list[SyncReport] = []
    for sync, states, outcome in planned:
        if outcome != "already there":
            destination.replace(sync, states)
        reports.append(_verify(sync, states, destination.read(sync), outcome))
    return reports


def _verify(
    sync: str, states: list[KeptState], found: list[KeptState], outcome: Outcome
) -> SyncReport:
    there = {s.slot: s for s in found}
    kept: list[KeptReport] = []
    problems: list[str] = []
    for state in states:
        report = KeptReport(state.slot, state.current, state.records, state.digest())
        other = there.pop(state.slot, None)
        if other is None:
            problems.append(f"state {state.slot} is missing in the destination")
        else:
            report.destination_records = other.records
            report.destination_digest = other.digest()
            if not report.matches:
                problems.append(
                    f"state {state.slot}: {state.records:,} record(s) copied, "
                    f"{other.records:,} found, digests {report.digest[:12]} and "
                    f"{(report.destination_digest or '')[:12]}"
                )
            elif (state.meta, state.current) != (other.meta, other.current):
                problems.append(f"state {state.slot}: its meta differs in the destination")
        kept.append(report)
    problems += [f"unexpected state {slot} in the destination" for slot in there]
    if problems:
        return SyncReport(sync, "mismatch", kept, "; ".join(problems))
    return SyncReport(sync, outcome, kept)


def _rows(database: StateDatabase, table: str) -> dict[tuple[object, ...], tuple[object, ...]]:
    key, columns = TABLES[table]
    at = [columns.index(k) for k in key]
    with database.read() as conn:
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    return {tuple(row[i] for i in at): tuple(row) for row in rows}


def _shared_table(database: StateDatabase, table: str) -> TableReport:
    rows = len(_rows(database, table))
    return TableReport(table, rows, 0, rows, moved=False)


def _copy_tables(source: StateDatabase, destination: StateDatabase) -> list[TableReport]:
    """Merge each table by its key (the source's row wins), then compare every source row."""
    found = {table: _rows(source, table) for table in TABLES}
    there = {table: _rows(destination, table) for table in TABLES}
    changes: dict[str, list[tuple[object, ...]]] = {
        table: [row for k, row in found[table].items() if there[table].get(k) != row]
        for table in TABLES
    }
    if any(changes.values()):
        with destination.write() as conn:
            for table, rows in changes.items():
                key, columns = TABLES[table]
                if not rows:
                    continue
                at = [columns.index(k) for k in key]
                where = " AND ".join(f"{k} = ?" for k in key)
                conn.executemany(
                    f"DELETE FROM {table} WHERE {where}", [[row[i] for i in at] for row in rows]
                )
                marks = ", ".join("?" for _ in columns)
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    [list(row) for row in rows],
                )
    reports: list[TableReport] = []
    for table in TABLES:
        after = _rows(destination, table)
        verified = sum(1 for k, row in found[table].items() if after.get(k) == row)
        reports.append(TableReport(table, len(found[table]), len(changes[table]), verified))
    return reports


__all__ = [
    "KeptReport",
    "MigrationReport",
    "StatePlace",
    "SyncReport",
    "TableReport",
    "migrate",
    "requested_place",
]
