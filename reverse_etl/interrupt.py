"""SIGINT and SIGTERM stop a run cleanly: the batch in flight is finished and acknowledged,
the run is recorded as `interrupted`, and the process exits 130 or 143.

The CLI installs the handlers (`install`); the library only asks `requested()` between batches.
Outside a delivery (`graceful()`), and on a second signal, the handler raises `RunInterrupted`
at once, so start-up and long reads stop promptly too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested: int | None = None
_graceful = 0
_lock = threading.Lock()


class RunInterrupted(BaseException):
    """A signal stopped retl. A BaseException like KeyboardInterrupt: no `except Exception`
    swallows it on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread; a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


def ignore_from_now_on() -> None:
    """SIGINT and SIGTERM are ignored from here on (the process is exiting); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _requested
    first = _requested is None
    _requested = signum
    if _graceful == 0 or not first:
        raise RunInterrupted(signum)


def requested() -> int | None:
    """The signal that asked retl to stop, if one did."""
    return _requested


def reset() -> None:
    global _requested
    _requested = None


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Inside, the first signal only sets `requested()`: the caller stops at a safe point."""
    global _graceful
    with _lock:
        _graceful += 1
    try:
        yield
    finally:
        with _lock:
            _graceful -= 1
