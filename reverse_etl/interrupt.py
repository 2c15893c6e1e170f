"""SIGINT and SIGTERM stop a run cleanly: the batch in flight is finished and acknowledged,
the run is recorded as `interrupted`, and the process exits 130 or 143.

The CLI installs the handlers (`install`); the library only asks `requested()` between batches.
Outside a delivery (`graceful()`), and on a second signal, the handler raises `RunInterrupted`
at once, so start-up and long reads stop promptly too.

Stopping never waits on a server. Code that blocks on one registers how to cancel it
(`cancelling`): when a signal stops retl at once every registered cancel is called, on a thread
of its own, so the statement fails at once and its connection is closed instead of rolled back.
A delivery that has not reached its safe point `GRACE_SECONDS` after the first signal has its
destination statements cancelled the same way (their transactions do not commit).
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

#: How long a delivery may take to reach its safe point after the first signal.
GRACE_SECONDS = 3.0

_requested: int | None = None
_graceful = 0
# Reentrant: the handler runs on the main thread, possibly while that thread holds the lock.
_lock = threading.RLock()
_cancels: dict[int, Callable[[bool], None]] = {}
_tokens = itertools.count()
_grace: threading.Timer | None = None


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
    global _requested, _grace
    first = _requested is None
    _requested = signum
    if _graceful == 0 or not first:
        cancel_all()
        raise RunInterrupted(signum)
    # Inside a delivery: the safe point (the batches in flight answered) normally comes soon;
    # a statement still running after the grace period is cancelled, never waited for.
    _grace = threading.Timer(GRACE_SECONDS, cancel_all, kwargs={"grace_over": True})
    _grace.daemon = True
    _grace.start()


def requested() -> int | None:
    """The signal that asked retl to stop, if one did."""
    return _requested


def reset() -> None:
    global _requested, _grace
    _requested = None
    if _grace is not None:
        _grace.cancel()
        _grace = None


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


@contextlib.contextmanager
def cancelling(cancel: Callable[[bool], None]) -> Iterator[None]:
    """While inside, stopping retl calls `cancel(grace_over)` from another thread: it must only
    ask the server to stop (psycopg's `cancel_safe`), never use the connection itself; the code
    that waited then fails promptly and closes its connection on the way out. `grace_over` is
    True when a delivery did not reach its safe point in `GRACE_SECONDS` (a destination's
    statement is cancelled then; a write of state, which records what a destination took, is
    not), False when retl stops at once."""
    token = next(_tokens)
    with _lock:
        _cancels[token] = cancel
    try:
        yield
    finally:
        with _lock:
            _cancels.pop(token, None)


def cancel_all(*, grace_over: bool = False) -> None:
    """Call every registered cancel, each on a daemon thread: a signal handler must not wait
    for a server (a cancel request opens a connection of its own)."""
    with _lock:
        cancels = list(_cancels.values())
    for cancel in cancels:
        threading.Thread(
            target=_quietly, args=(cancel, grace_over), name="retl-cancel", daemon=True
        ).start()


def _quietly(cancel: Callable[[bool], None], grace_over: bool) -> None:
    with contextlib.suppress(Exception):
        cancel(grace_over)
