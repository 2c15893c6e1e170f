"""What a project remembers: snapshots, and the run log, dead letter queue, pauses and per-sync
locks in a state store (.retl/ on this machine, or a shared PostgreSQL schema: state/store.py)."""

from __future__ import annotations

from reverse_etl.state.deadletters import DeadLetter, DeadLetterEntry, DeadLetterQueue
from reverse_etl.state.lock import LockInfo, SyncLock, force_unlock, lock_holder
from reverse_etl.state.runlog import (
    INTERRUPTED_ERROR,
    RunLog,
    RunRecord,
    RunStatus,
    RunTrigger,
)

__all__ = [
    "INTERRUPTED_ERROR",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetterQueue",
    "LockInfo",
    "RunLog",
    "RunRecord",
    "RunStatus",
    "RunTrigger",
    "SyncLock",
    "force_unlock",
    "lock_holder",
]
