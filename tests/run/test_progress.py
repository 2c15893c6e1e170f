"""A running run's counts reach the run log on their own thread: a store that fails never
fails nor holds up the delivery that reports them."""

from __future__ import annotations

import time
from pathlib import Path

from reverse_etl.run.progress import ProgressRecorder
from reverse_etl.state.postgres import PostgresStore
from reverse_etl.state.runlog import RunLog


def test_the_newest_counts_reach_the_run_log(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "retl.db")
    run = log.start("crm", None, None, False)
    recorder = ProgressRecorder(log, run.id)

    recorder({"create": 1})
    recorder({"create": 2, "update": 1})
    recorder.close()

    record = log.get(run.id)
    assert record is not None and record.counts == {"create": 2, "update": 1}


def test_a_store_that_cannot_be_reached_fails_no_call_and_is_retried() -> None:
    store = PostgresStore("postgresql://retl:secret@127.0.0.1:1/nowhere", "retl_state")
    recorder = ProgressRecorder(RunLog(store.database()), "20260101T000000Z-abcdef")

    recorder({"create": 1})  # returns at once: the write happens on the recorder's thread
    deadline = time.monotonic() + 10
    while recorder.failed_writes < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    recorder.close()
    store.close()

    assert recorder.failed_writes >= 2  # the failed write was tried again
