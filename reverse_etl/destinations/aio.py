"""One background event loop per process for API connectors.

The engine delivers batches from worker threads (one per lane); an API connector's `deliver`
hands its coroutine to this loop and waits, so every request of a run, whatever its lane,
runs on one loop with httpx's AsyncClient, and a bounded number of them are in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's delivery loop, started on first use in a daemon thread."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new = asyncio.new_event_loop()
            thread = threading.Thread(target=new.run_forever, name="retl-io", daemon=True)
            thread.start()
            _loop = new
        return _loop


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run `coroutine` on the delivery loop and wait for its result (from any other thread)."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop()).result()
