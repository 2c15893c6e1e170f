"""Where everything retl remembers about runs lives, apart from snapshots: the run log, dead
letters, records in doubt, operational pauses and the per-sync run locks (`state:` in retl.yml).

`LocalStore` keeps them in `.retl/` on this machine (SQLite + file locks, state/database.py and
state/lock.py). `PostgresStore` (state/postgres.py) keeps the same tables in a PostgreSQL schema
and locks across machines, so that every machine running the project sees the same runs,
dead letters, pauses, schedules and locks. Schedules, delete windows and request budgets read
the run log, so they follow the store without knowing it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

from reverse_etl.config import Project
from reverse_etl.redact import mask_url
from reverse_etl.state.database import Database, StateDatabase
from reverse_etl.state.fence import Fence
from reverse_etl.state.layout import StateLayout
from reverse_etl.state.lock import LockInfo, SyncLock, force_unlock, lock_holder

StoreKind = Literal["local", "postgres", "warehouse"]


class Lease(Protocol):
    """A run's hold on one sync, from `StateStore.lock`: `acquire` raises StateLockedError
    naming the holder when another run holds it. `fence` is the run's claim in a shared store
    that every acknowledgement checks (None for local locks)."""

    @property
    def fence(self) -> Fence | None: ...

    @property
    def info(self) -> LockInfo | None: ...

    def acquire(self) -> LockInfo: ...

    def release(self) -> None: ...

    def __enter__(self) -> Lease: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StateStore(ABC):
    """The run log & co. and the run locks of a project, in one place."""

    #: local: `.retl/`; postgres: `state.backend: postgres`; warehouse: the PostgreSQL warehouse
    #: of `state.backend: warehouse`.
    kind: StoreKind
    #: True when other machines see the same runs, pauses and locks.
    shared: bool
    #: Where it is, as `retl status` prints it (never a password).
    where: str
    #: A sentence `retl status` adds about where state lives (None: nothing to add).
    note: str | None = None

    @abstractmethod
    def database(self) -> StateDatabase:
        """What RunLog, DeadLetterQueue, InDoubtRecords and PauseStore take."""

    @abstractmethod
    def lock(self, sync: str, command: str | None = None) -> Lease:
        """The lock of `sync`, not yet taken: `with store.lock(...) as lease:` or
        `lease.acquire()` / `lease.release()`."""

    @abstractmethod
    def lock_holder(self, sync: str) -> LockInfo | None:
        """Who holds the lock of `sync` now; None when nobody does."""

    @abstractmethod
    def force_unlock(self, sync: str) -> bool:
        """`retl unlock`: clear the lock of `sync`; True when there was something to clear."""

    def close(self) -> None:
        return None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "shared": self.shared, "where": self.where, "note": self.note}


class LocalStore(StateStore):
    """`.retl/retl.db` (SQLite) and `.retl/locks/` (file locks) on this machine."""

    kind: StoreKind = "local"
    shared = False

    def __init__(self, layout: StateLayout, note: str | None = None) -> None:
        self.layout = layout
        self.where = "local (.retl/)"
        self.note = note

    def database(self) -> StateDatabase:
        return Database(self.layout.database)

    def lock(self, sync: str, command: str | None = None) -> SyncLock:
        return SyncLock(self.layout.locks, sync, command=command)

    def lock_holder(self, sync: str) -> LockInfo | None:
        return lock_holder(self.layout.locks, sync)

    def force_unlock(self, sync: str) -> bool:
        return force_unlock(self.layout.locks, sync)


def open_store(project: Project) -> StateStore:
    """The store retl.yml's `state:` names (nothing is connected before the first use)."""
    layout = StateLayout.for_project(Path(project.root))
    config = project.config
    if config is None or config.state.backend == "local":
        return LocalStore(layout)
    from reverse_etl.state.postgres import PostgresStore

    state = config.state
    if state.backend == "postgres":
        assert state.url is not None  # StateConfig requires it
        return PostgresStore(state.url, state.schema_)
    name = state.warehouse or ""
    block = config.warehouses.get(name)
    url = block.url if block is not None else ""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgres", "postgresql"):
        return PostgresStore(url, state.schema_, warehouse=name)
    engine = scheme or "an unknown engine"
    return LocalStore(
        layout,
        note=f"snapshots are in warehouse '{name}' ({mask_url(engine)}); the run log, dead "
        f"letters, pauses and locks stay in .retl/ on this machine, as state.backend "
        "'warehouse' keeps them only on a PostgreSQL warehouse: set state.backend: postgres "
        "(with state.url) to share them between machines",
    )


__all__ = ["Lease", "LocalStore", "StateStore", "StoreKind", "open_store"]
