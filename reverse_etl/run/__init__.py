"""Execute a Plan in batches: acknowledgements into state, rejections into the dead letter queue."""

from __future__ import annotations

from reverse_etl.run.engine import Engine
from reverse_etl.run.events import EventHook, RunEvent
from reverse_etl.run.outcome import RunOptions, RunOutcome

__all__ = ["Engine", "EventHook", "RunEvent", "RunOptions", "RunOutcome"]
