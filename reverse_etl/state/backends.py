"""Where a sync's snapshot lives: `.retl/state/` (local, the default), a schema of the
warehouse (`state.backend: warehouse`, the diff runs there) or a schema of a dedicated
PostgreSQL database (`state.backend: postgres`, state.postgres: the diff runs here over a copy),
SPEC §6.3. The Engine plans and the delivery acknowledges through this interface; `retl state
show/reset` read and reset through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa

from reverse_etl.config import Project
from reverse_etl.errors import ConfigError
from reverse_etl.state.fence import Fence
from reverse_etl.state.snapshot import SnapshotMeta, SnapshotStore, StateOpened
from reverse_etl.state.warehouse import WarehouseSnapshotStore
from reverse_etl.types import TargetId
from reverse_etl.warehouse.sessions import WarehouseSession, open_session


class SnapshotBackend(ABC):
    """One sync's snapshot. `open` binds it to a target (see `SnapshotStore.open`); while a
    plan or run is under way, `con` is the engine's DuckDB connection."""

    sync: str
    #: Where the state lives, as a user reads it.
    where: str
    #: True when the diff runs locally over a snapshot attached to the engine's connection as
    #: `retl_state` (`.retl/state/`, and the copy of `state.backend: postgres`).
    local: bool

    @abstractmethod
    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        """Bind to the state of `target` in `mode`'s family; writable, state of another target
        or mode family is kept aside, after `before_change` (which may raise to change nothing)."""

    @abstractmethod
    def meta(self, con: duckdb.DuckDBPyConnection) -> SnapshotMeta: ...

    @abstractmethod
    def acknowledge(
        self,
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        """Commit one batch: accepted records, deleted keys and meta values, atomically."""

    @abstractmethod
    def read_meta(self, target: TargetId | None = None) -> SnapshotMeta | None:
        """Meta for `status` / `state show` outside a run; None when never run."""

    @abstractmethod
    def sample(self, limit: int = 10) -> list[tuple[str, str]]: ...

    @abstractmethod
    def kept_aside(self) -> list[str]:
        """State of targets the sync pointed at before, as a user reads where it is."""

    @abstractmethod
    def reset(self) -> bool: ...

    def close(self) -> None:
        return None

    def __enter__(self) -> SnapshotBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalBackend(SnapshotBackend):
    """`.retl/state/<sync>.duckdb`, attached to the engine's connection (state.snapshot)."""

    local = True

    def __init__(self, store: SnapshotStore, where: str) -> None:
        self.store = store
        self.sync = store.sync
        self.where = where

    @classmethod
    def attached(cls, sync: str) -> LocalBackend:
        """The snapshot already attached to the engine's connection (acknowledgements only)."""
        return cls(SnapshotStore(Path(), sync), "")

    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        opened = self.store.open(
            con, target, writable=writable, mode=mode, before_change=before_change
        )
        # Kept-aside files as the user finds them: next to `where`, in the project.
        change, switch = opened.target_change, opened.mode_switch
        if change is not None and change.kept_aside:
            change = replace(change, kept_aside=self._shown(change.kept_aside))
        if switch is not None and switch.kept_aside:
            switch = replace(switch, kept_aside=self._shown(switch.kept_aside))
        return StateOpened(change, switch)

    def _shown(self, path: str) -> str:
        return str(Path(self.where).parent / Path(path).name) if self.where else path

    def meta(self, con: duckdb.DuckDBPyConnection) -> SnapshotMeta:
        return SnapshotStore.meta(con)

    def acknowledge(
        self,
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        SnapshotStore.acknowledge(con, delivered, deleted, **meta)

    def read_meta(self, target: TargetId | None = None) -> SnapshotMeta | None:
        return self.store.read_meta()

    def sample(self, limit: int = 10) -> list[tuple[str, str]]:
        return self.store.sample(limit)

    def kept_aside(self) -> list[str]:
        return [str(p) for p in self.store.kept_aside()]

    def reset(self) -> bool:
        return self.store.reset()


class TableBackend(SnapshotBackend):
    """Snapshots in the tables of `WarehouseSnapshotStore` (state.warehouse), in a database
    this backend holds a session to, used by one thread at a time (the plan, then the
    acknowledgement writer, then the run's end). WarehouseBackend diffs in that database;
    PostgresBackend (state.postgres_snapshots) diffs locally over a copy."""

    def __init__(
        self,
        session: WarehouseSession,
        schema: str,
        sync: str,
        *,
        fence: Fence | None = None,
        place: str | None = None,
    ) -> None:
        self.session = session
        # The fence is checked on PostgreSQL only (see state.warehouse).
        self.store = WarehouseSnapshotStore(session, schema, sync, fence=fence, place=place)
        self.sync = sync
        self.where = self.store.where

    def meta(self, con: duckdb.DuckDBPyConnection) -> SnapshotMeta:
        return self.store.meta()

    def read_meta(self, target: TargetId | None = None) -> SnapshotMeta | None:
        return self.store.read_meta(target)

    def sample(self, limit: int = 10) -> list[tuple[str, str]]:
        return self.store.sample(limit)

    def kept_aside(self) -> list[str]:
        return self.store.kept_aside()

    def reset(self) -> bool:
        return self.store.reset()

    def close(self) -> None:
        self.session.close()


class WarehouseBackend(TableBackend):
    """Tables in a schema of the warehouse (state.warehouse); the diff runs there."""

    local = False

    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        return self.store.open(target, writable=writable, mode=mode, before_change=before_change)

    def relation(self) -> str:
        return self.store.relation()

    def acknowledge(
        self,
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        self.store.acknowledge(delivered, deleted, **meta)


def uses_warehouse_state(project: Project) -> bool:
    return project.config is not None and project.config.state.backend == "warehouse"


def open_backend(
    project: Project, sync: str, state_dir: Path, fence: Fence | None = None
) -> SnapshotBackend:
    """The snapshot backend retl.yml's `state:` names, for one sync. `fence`: the run's claim
    on the sync in a shared store, checked by every acknowledgement (state/fence.py) in the
    state database or a PostgreSQL warehouse; None outside a run and with local state."""
    state = project.config.state if project.config is not None else None
    if state is not None and state.backend == "postgres":
        from reverse_etl.state.postgres_snapshots import PostgresBackend  # it builds on this module

        assert state.url is not None, "validated: backend postgres has a url"
        return PostgresBackend.connect(state.url, state.schema_, sync, fence)
    if not uses_warehouse_state(project):
        store = SnapshotStore(state_dir, sync)
        return LocalBackend(store, project.relative(store.path))
    assert state is not None and project.config is not None
    name = state.warehouse
    block = project.config.warehouses.get(name or "")
    if name is None or block is None:
        raise ConfigError(
            "state.backend 'warehouse' needs state.warehouse naming a warehouse of retl.yml; "
            "run `retl validate`"
        )
    session = open_session(name, block.url, project.root, block.query_timeout)
    return WarehouseBackend(session, state.schema_, sync, fence=fence)
