"""Acknowledgements into state, written in order on a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from reverse_etl.errors import StateError, StateLockedError

# Commits accepted records and deleted keys into state (a snapshot backend's `acknowledge`).
Commit = Callable[[duckdb.DuckDBPyConnection, pa.Table, pa.Table], None]


@dataclass(frozen=True)
class _Acknowledgement:
    delivered: pa.Table  # key, hash, dest_id
    deleted: pa.Table  # key


class AcknowledgementWriter:
    """Writes acknowledgements to state in order on a background thread, so that the next batch
    is delivered while the last one is committed. At most `depth` batches wait; the first error
    stops the run at the next submit or at exit, and exit waits for every pending commit.

    Batches that wait together are committed in one transaction (a commit costs far more than
    the rows it holds): each batch is still all in state or not at all, and a crash loses at
    most the `depth` waiting batches, which the next run sends again."""

    def __init__(self, con: duckdb.DuckDBPyConnection, commit: Commit, depth: int = 4) -> None:
        self.con = con
        self.commit = commit
        self.jobs: queue.Queue[
            _Acknowledgement | tuple[Callable[..., None], tuple[Any, ...]] | None
        ] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="retl-acks", daemon=True)

    def __enter__(self) -> AcknowledgementWriter:
        self.thread.start()
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.jobs.put(None)
        self.thread.join()
        if exc_type is None:
            self._raise()
        # Else the run is already ending with its own error: a state error is kept for the
        # caller (`pending_error`) rather than raised over it, which would hide the cause.

    def pending_error(self) -> StateError | None:
        """The error that stopped the state writes, once they have all been tried."""
        try:
            self._raise()
        except StateError as exc:
            return exc
        return None

    def acknowledge(self, delivered: pa.Table, deleted: pa.Table) -> None:
        """Record a batch's accepted records and deleted keys (through `commit`)."""
        self._raise()
        self.jobs.put(_Acknowledgement(delivered, deleted))

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        """Run `job(con, *args)` after everything submitted before it."""
        self._raise()
        self.jobs.put((job, args))

    def _raise(self) -> None:
        # Sticky: once a state write failed, every later write is skipped and every call says
        # so, so that no later batch is recorded over the gap. A lease taken over by another run
        # (the fence, state/fence.py) is said as such, with its hint.
        if self.error is not None:
            error = self.error
            if isinstance(error, StateLockedError):
                raise StateLockedError(error.message, hint=error.hint) from error
            raise StateError(f"could not record delivered records in state: {error}") from error

    def _work(self) -> None:
        while True:
            items = [self.jobs.get()]
            while True:
                try:
                    items.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            waiting: list[_Acknowledgement] = []
            for item in items:
                if item is None:
                    self._commit(waiting)
                    return
                if isinstance(item, _Acknowledgement):
                    waiting.append(item)
                    continue
                self._commit(waiting)
                waiting = []
                job, args = item
                self._guarded(job, *args)
            self._commit(waiting)

    def _commit(self, acknowledgements: list[_Acknowledgement]) -> None:
        if not acknowledgements:
            return
        delivered = _concat([a.delivered for a in acknowledgements])
        deleted = _concat([a.deleted for a in acknowledgements])
        self._guarded(self.commit, delivered, deleted)

    def _guarded(self, job: Callable[..., None], *args: Any) -> None:
        if self.error is None:
            try:
                job(self.con, *args)
            except BaseException as exc:
                self.error = exc


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
