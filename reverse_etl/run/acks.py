"""Acknowledgements into state, written in order on a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import duckdb

from reverse_etl.errors import StateError


class AcknowledgementWriter:
    """Writes acknowledgements to state in order on a background thread, so that the next batch
    is delivered while the last one is committed. At most `depth` batches wait; the first error
    stops the run at the next submit or at exit, and exit waits for every pending commit."""

    def __init__(self, con: duckdb.DuckDBPyConnection, depth: int = 2) -> None:
        self.con = con
        self.jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue(
            depth
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="retl-acks", daemon=True)

    def __enter__(self) -> AcknowledgementWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.jobs.put(None)
        self.thread.join()
        self._raise()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        self._raise()
        self.jobs.put((job, args))

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise StateError(f"could not record delivered records in state: {error}") from error

    def _work(self) -> None:
        while (item := self.jobs.get()) is not None:
            if self.error is None:
                job, args = item
                try:
                    job(self.con, *args)
                except BaseException as exc:
                    self.error = exc
