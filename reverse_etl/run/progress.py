"""A running run's counts, written to the run log on a thread of their own.

The run log keeps what a run has delivered so far, so that a run killed before it ends shows
what the destination acknowledged, not zeros. Those writes never hold up nor fail the delivery:
with a shared store over the network a write may be slow or fail; the newest counts are then
written at the next chance (the delivery reports them about every second).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from reverse_etl.errors import RetlError
from reverse_etl.state.runlog import RunLog

_log = logging.getLogger(__name__)
# How long the end of a run waits for a progress write under way (its final counts are
# written by `RunLog.finish` anyway, which a late progress write no longer changes).
_CLOSE_WAIT_S = 5.0
_RETRY_S = 1.0


class ProgressRecorder:
    """Call it with a run's counts as often as they change; `close` when the run ends."""

    def __init__(self, run_log: RunLog, run_id: str) -> None:
        self.run_log = run_log
        self.run_id = run_id
        #: Writes that failed (each retried with the newest counts).
        self.failed_writes = 0
        self._latest: dict[str, int] | None = None
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="retl-progress", daemon=True)
        self._thread.start()

    def __call__(self, counts: Mapping[str, int]) -> None:
        with self._changed:
            self._latest = dict(counts)
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(_CLOSE_WAIT_S)

    def _work(self) -> None:
        while True:
            with self._changed:
                while self._latest is None and not self._stopping:
                    self._changed.wait()
                if self._latest is None:
                    return
                counts, self._latest = self._latest, None
                last = self._stopping  # the newest counts are written once more, then no retry
            try:
                self.run_log.progress(self.run_id, counts)
            except RetlError as exc:
                self.failed_writes += 1
                _log.warning("run %s: progress not recorded (retried): %s", self.run_id, exc)
                if last:
                    return
                with self._changed:
                    if self._latest is None:
                        self._latest = counts  # unless newer counts came meanwhile
                    self._changed.wait(_RETRY_S)
