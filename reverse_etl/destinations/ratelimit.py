"""Request rate limits that belong to a destination *account*, not to a connection: every lane
of a run, and every sync that writes to the same account in one `retl run --all`, draw their
request slots from one limiter (`limiter_for`).

A limiter lets requests out at most `per_second` a second, and at most `per_window` in any
`window_seconds`. A caller takes a slot when it sends (`acquire`) and reports the answer
(`answered`): a request counts until its answer came back, so however late it reaches the server
(a slow network, a busy event loop, a loaded machine) no window the server counts ever holds
more. When the API answers 429 with a Retry-After, `pause_until` holds every caller back. It is thread-safe and event-loop agnostic
(callers sleep on their own), so a limiter outlives the event loop of one run.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Seconds added to every window of sends counted at their slot (`reserve`), for the spread of
# network and scheduling delays; sends counted at their answer (`acquire`) need only a trifle.
JITTER_MARGIN = 0.05
ANSWER_MARGIN = 0.005
# How often a caller looks again when every slot of a window is held by a request in flight.
IN_FLIGHT_POLL = 0.005


@dataclass(frozen=True)
class RateLimit:
    """A request budget; None in a field means that bound is not set."""

    per_second: float | None = None
    per_window: int | None = None
    window_seconds: float = 10.0


class Send:
    """One request counted by a limiter: `at` is when it left, and once `answered`, when its
    answer came back; while it is in flight it counts as arriving at any moment."""

    __slots__ = ("at", "in_flight")

    def __init__(self, at: float, in_flight: bool) -> None:
        self.at = at
        self.in_flight = in_flight

    def latest(self) -> float:
        """The latest moment the server can have counted it (unbounded while in flight)."""
        return math.inf if self.in_flight else self.at


class RateLimiter:
    """Lets requests out so that no window of the limit ever holds more requests than it
    allows, whatever the number of concurrent callers, and however late a request arrives.

    A server counts a request when it arrives, somewhere between the moment it left and the
    moment its answer came back. `acquire` therefore counts each request at its answer (and
    an unanswered one as arriving any moment): the limit holds for arrivals whatever the
    network, the event loop or a loaded machine delay (windows are kept `ANSWER_MARGIN`
    longer than the limit's; `JITTER_MARGIN` for sends planned ahead with `reserve`)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0.0  # earliest time for the next request under per_second
        self._sent: collections.deque[Send] = collections.deque()  # sends inside the window
        self._second: collections.deque[Send] = collections.deque()  # sends inside 1 s
        self._paused_until = 0.0
        self.requests = 0
        self.waited = 0.0

    def reserve(self) -> float:
        """Claim the next free slot ahead of time; returns how many seconds to wait before
        sending (for callers that cannot report the answer: the send counts at its slot).

        `per_second` also bounds any (1 s + margin) to `per_second` requests, so a server that
        sees requests up to the margin late never sees more."""
        with self._lock:
            now = self.clock()
            limit = self.limit
            at = self._free_slot(now, limit, JITTER_MARGIN)
            self._record(limit, Send(at, in_flight=False))
            self.waited += at - now
            return at - now

    def claim(self) -> tuple[float, Send | None]:
        """Take a slot now if one is free: (0, the send; report its answer with `answered`),
        else (seconds to wait before asking again, None) and nothing is recorded."""
        with self._lock:
            now = self.clock()
            limit = self.limit
            at = self._free_slot(now, limit, ANSWER_MARGIN)
            if at > now:
                # a window full of requests still in flight opens when one is answered
                return (min(at - now, IN_FLIGHT_POLL) if math.isinf(at) else at - now), None
            send = Send(now, in_flight=True)
            self._record(limit, send)
            return 0.0, send

    def answered(self, send: Send) -> None:
        """The request of `send` got its answer (or failed): it counts from now on."""
        with self._lock:
            send.at = self.clock()
            send.in_flight = False

    def _free_slot(self, now: float, limit: RateLimit, margin: float) -> float:
        """The earliest time a request may be sent under `limit`, windows kept `margin` longer
        (infinite while a full window is still in flight). Call with the lock held."""
        at = max(now, self._paused_until)
        if limit.per_second:
            at = max(at, self._next)
            at = self._opens(at, self._second, max(1, int(limit.per_second)), 1.0, margin)
        if limit.per_window:
            at = self._opens(at, self._sent, limit.per_window, limit.window_seconds, margin)
        return at

    def _record(self, limit: RateLimit, send: Send) -> None:
        if limit.per_second:
            self._next = send.at + 1.0 / limit.per_second
            self._second.append(send)
        if limit.per_window:
            self._sent.append(send)
        self.requests += 1

    @staticmethod
    def _opens(
        at: float,
        sent: collections.deque[Send],
        most: int,
        seconds: float,
        margin: float,
    ) -> float:
        """The earliest time from `at` at which a window of `seconds` (plus `margin`) holds
        fewer than `most` of the recorded sends, each counted at the latest moment it can
        arrive."""
        window = seconds + margin
        while sent and sent[0].latest() <= at - window:
            sent.popleft()
        latest = sorted(s.latest() for s in sent)
        if len(latest) >= most:
            # the slot opens when the oldest request that counts leaves the window
            at = max(at, latest[-most] + window)
        return at

    async def acquire(self) -> Send:
        """Wait (on the caller's event loop) for a slot and take it; the caller reports the
        answer with `answered`."""
        started = self.clock()
        while True:
            wait, send = self.claim()
            if send is not None:
                self.waited += self.clock() - started
                return send
            await asyncio.sleep(wait)

    def acquire_blocking(self) -> Send:
        started = self.clock()
        while True:
            wait, send = self.claim()
            if send is not None:
                self.waited += self.clock() - started
                return send
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
