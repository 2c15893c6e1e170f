"""Request rate limits that belong to a destination *account*, not to a connection: every lane
of a run, and every sync that writes to the same account in one `retl run --all`, draw their
request slots from one limiter (`limiter_for`).

A limiter hands out send times: at most `per_second` requests a second, and at most
`per_window` requests in any `window_seconds`. When the API answers 429 with a Retry-After,
`pause_until` holds every caller back until then. It is thread-safe and event-loop agnostic
(callers sleep on their own), so a limiter outlives the event loop of one run.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Seconds added to every window, for the spread of network and scheduling delays.
JITTER_MARGIN = 0.05


@dataclass(frozen=True)
class RateLimit:
    """A request budget; None in a field means that bound is not set."""

    per_second: float | None = None
    per_window: int | None = None
    window_seconds: float = 10.0


class RateLimiter:
    """Reserves send times so that no window of the limit ever holds more requests than it
    allows, whatever the number of concurrent callers."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0.0  # earliest time for the next request under per_second
        self._sent: collections.deque[float] = collections.deque()  # sends inside the window
        self._second: collections.deque[float] = collections.deque()  # sends inside 1 s
        self._paused_until = 0.0
        self.requests = 0
        self.waited = 0.0

    def reserve(self) -> float:
        """Claim the next free slot; returns how many seconds to wait before sending.

        Windows are kept `JITTER_MARGIN` seconds longer than the limit's: requests leave on
        time but arrive with varying delays, and the server counts arrivals. `per_second` also
        bounds any (1 s + margin) to `per_second` requests, so the server never sees more."""
        with self._lock:
            now = self.clock()
            at = max(now, self._paused_until)
            if self.limit.per_second:
                at = max(at, self._next)
                self._next = at + 1.0 / self.limit.per_second
                at = self._fit(at, self._second, max(1, int(self.limit.per_second)), 1.0)
            if self.limit.per_window:
                at = self._fit(at, self._sent, self.limit.per_window, self.limit.window_seconds)
            self.requests += 1
            self.waited += at - now
            return at - now

    @staticmethod
    def _fit(at: float, sent: collections.deque[float], most: int, seconds: float) -> float:
        """The earliest time from `at` at which a window of `seconds` holds fewer than `most`
        earlier sends; records the send."""
        window = seconds + JITTER_MARGIN
        while sent and sent[0] <= at - window:
            sent.popleft()
        if len(sent) >= most:
            # the slot opens when the oldest request that counts leaves the window
            at = max(at, sent[-most] + window)
        sent.append(at)
        return at

    async def acquire(self) -> None:
        """Wait (on the caller's event loop) for a slot."""
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def acquire_blocking(self) -> None:
        wait = self.reserve()
        if wait > 0:
            time.sleep(wait)

    def pause_until(self, moment: float) -> None:
        """No request goes out before `moment` (clock time): the API said to wait."""
        with self._lock:
            self._paused_until = max(self._paused_until, moment)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self.clock() + seconds)


_LIMITERS: dict[str, RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(account: str, limit: RateLimit) -> RateLimiter:
    """The process-wide limiter of one destination account (e.g. `hubspot:<portal or token
    fingerprint>`): syncs of one `run --all` that write to the same account share it, whatever
    thread they run on (`--threads`). A later call with a stricter limit tightens it."""
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(account)
        if limiter is None:
            limiter = _LIMITERS[account] = RateLimiter(limit)
        elif limit != limiter.limit:
            with limiter._lock:  # a reservation on another thread sees one limit or the other
                limiter.limit = _stricter(limiter.limit, limit)
        return limiter


def _stricter(a: RateLimit, b: RateLimit) -> RateLimit:
    def low(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else min(x, y)

    per_window = low(a.per_window, b.per_window)
    return RateLimit(
        per_second=low(a.per_second, b.per_second),
        per_window=int(per_window) if per_window is not None else None,
        window_seconds=max(a.window_seconds, b.window_seconds),
    )
