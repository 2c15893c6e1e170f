"""One retry policy for API connectors: exponential backoff with jitter on connection errors,
timeouts, 429 and 5xx; `Retry-After` (and vendor reset headers) honoured; a cap per wait and a
total cap; never a retry of a 4xx that cannot succeed.

`send` runs one request under the policy and the account's rate limiter, and optionally under
`RetryBudget`s (seconds a batch or a run may spend retrying, shared by its requests). What it
cannot get through in time it raises as `GiveUp`, which says whether a request may have been
applied (`maybe_applied`: it was written and its answer was lost or a 5xx other than 503), so a
connector reports those records *in doubt*, the others *retry later*, or raises a
DestinationError when the destination never answered at all.

A request counts as sent (`RetryStats.requests`) only once it was written to a connection: a
refused connect is an attempt, not a request.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from reverse_etl.destinations.ratelimit import RateLimiter

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Retryable answers that say the request was not processed (RFC 9110: timed out waiting for it,
# too early, too many requests, unavailable); 500, 502 and 504 may follow a partial or complete
# application, so a request given up on after them may have been applied.
NOT_APPLIED_STATUS = frozenset({408, 425, 429, 503})
# Transport errors raised after the request was written: the server may have applied it.
_AFTER_WRITE = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    initial_wait: float = 0.5
    # A single wait never exceeds this (a longer Retry-After still holds the account's limiter).
    max_wait: float = 60.0
    # All attempts of one request together stop after this many seconds.
    total_seconds: float = 180.0


class RetryableResponse(Exception):
    """A response worth trying again (429, 5xx); carries how long the server asked to wait."""

    def __init__(self, response: httpx.Response, wait: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.wait = wait


class GiveUp(Exception):
    """Retries exhausted: the last response (if any) and a one-line reason without secrets."""

    def __init__(
        self,
        reason: str,
        response: httpx.Response | None = None,
        *,
        unreachable: bool = False,
        maybe_applied: bool = False,
        attempts: int = 0,
        seconds: float = 0.0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        # No answer at all (connection refused, timeouts): the destination is unreachable.
        self.unreachable = unreachable
        # An attempt was written and its answer was lost (timeout, reset) or a 5xx other than
        # 503: the request may have been applied, so its records are in doubt, not "retry".
        self.maybe_applied = maybe_applied
        self.attempts = attempts
        self.seconds = seconds


class RetryBudget:
    """Seconds that a batch or a run may spend retrying, shared by all its requests (across
    lanes and tasks): the time during which at least one of them was failing, from a first
    failed attempt until it got an answer or was given up. A healthy but long run spends
    nothing, nor does one paced by 429s (Retry-After). Also counts the attempts, remembers the last failure and whether the destination
    ever answered (a response that is not worth retrying), for the messages that cite them.

    `seconds` None: no budget beyond the policy's."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.attempts = 0
        self.answered = False
        self.last_error = ""
        self._failing = 0
        self._since = 0.0
        self._spent = 0.0
        self._lock = threading.Lock()

    def spent(self) -> float:
        with self._lock:
            running = time.monotonic() - self._since if self._failing else 0.0
            return self._spent + running

    def left(self) -> float:
        """Seconds left (infinite without a budget; 0 when spent)."""
        if self.seconds is None:
            return math.inf
        return max(0.0, self.seconds - self.spent())

    @property
    def exhausted(self) -> bool:
        return self.left() <= 0.0

    def begin_failing(self) -> None:
        with self._lock:
            if not self._failing:
                self._since = time.monotonic()
            self._failing += 1

    def end_failing(self) -> None:
        with self._lock:
            self._failing -= 1
            if not self._failing:
                self._spent += time.monotonic() - self._since


@dataclass
class RetryStats:
    """What the requests of a run cost, for the run summary and the daily request budget:
    every request sent (written to a connection, retries included), every attempt (refused
    connects too), the retries, and how many of them followed a 429."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0
    attempts: int = 0

    def as_counts(self) -> dict[str, int]:
        counts = {"requests": self.requests} if self.requests else {}
        if self.retries:
            counts.update(retries=self.retries, throttled=self.throttled)
        if self.attempts > self.requests:  # some never reached the destination
            counts["attempts"] = self.attempts
        return counts


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: `Retry-After` as seconds or an HTTP date, else a
    vendor's reset header in seconds (`X-RateLimit-Reset-After`, HubSpot's
    `X-HubSpot-RateLimit-Interval-Milliseconds` when the window's remaining count is 0)."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            current = datetime.now(UTC).timestamp() if now is None else now
            return max(0.0, moment.timestamp() - current)
    reset = headers.get("x-ratelimit-reset-after")
    if reset:
        try:
            return max(0.0, float(reset))
        except ValueError:
            return None
    remaining = headers.get("x-hubspot-ratelimit-remaining")
    interval = headers.get("x-hubspot-ratelimit-interval-milliseconds")
    if remaining == "0" and interval:
        try:
            return float(interval) / 1000.0
        except ValueError:
            return None
    return None


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableResponse | httpx.TransportError)


async def send(
    request: Callable[[], Awaitable[httpx.Response]],
    *,
    limiter: RateLimiter | None,
    policy: RetryPolicy = RetryPolicy(),
    stats: RetryStats | None = None,
    retryable: Callable[[httpx.Response], bool] | None = None,
    budgets: Sequence[RetryBudget] = (),
    resend: bool = True,
) -> httpx.Response:
    """Send `request()` until it gets a response that is not worth retrying, honouring the
    limiter before every attempt and the server's Retry-After (which pauses the whole account).
    Returns that response (2xx, 207, or a 4xx the caller reports); raises GiveUp otherwise.

    With `budgets`, no attempt is retried once one of them is spent, and no wait outlasts
    what is left of them (a request in flight still gets its full timeout). `resend=False`:
    an attempt that may have been applied (see GiveUp.maybe_applied) is not sent again (a
    create without an idempotency key); it is given up at once."""
    exponential = wait_exponential_jitter(
        multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.initial_wait
    )
    worth_retrying = retryable or (lambda r: r.status_code in RETRYABLE_STATUS)
    failing = False  # this request holds the budgets' clocks running
    maybe_applied = False
    attempts = 0

    def budget_left() -> float:
        return min((b.left() for b in budgets), default=math.inf)

    def wait(state: RetryCallState) -> float:
        backoff = float(exponential(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse) and exc.wait is not None:
            backoff = min(max(exc.wait, 0.0), policy.max_wait)  # the limiter adds no more
        return min(backoff, budget_left())

    def stop(state: RetryCallState) -> bool:
        return (
            state.attempt_number >= policy.attempts
            or (state.seconds_since_start or 0.0) >= policy.total_seconds
            or budget_left() <= 0.0
        )

    def before_sleep(state: RetryCallState) -> None:
        if stats is None:
            return
        stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse) and exc.response.status_code == 429:
            stats.throttled += 1
        stats.waited_seconds += state.upcoming_sleep

    def failed(reason: str, *, throttled: bool = False) -> None:
        nonlocal failing
        for budget in budgets:
            budget.last_error = reason
            if not (failing or throttled):
                budget.begin_failing()
        # A 429 paces a destination that works: its waits spend no budget (the policy's
        # attempts and total seconds still bound them).
        failing = failing or not throttled

    async def attempt() -> httpx.Response:
        nonlocal maybe_applied, attempts
        send = await limiter.acquire() if limiter is not None else None
        attempts += 1
        if stats is not None:
            stats.attempts += 1
        for budget in budgets:
            budget.attempts += 1
        try:
            response = await request()
        except httpx.TransportError as exc:
            written = isinstance(exc, _AFTER_WRITE)
            if written and stats is not None:
                stats.requests += 1
            maybe_applied = maybe_applied or written
            failed(f"{exc.__class__.__name__}: {_first_line(exc)}")
            raise
        finally:
            if limiter is not None and send is not None:
                limiter.answered(send)
        if stats is not None:
            stats.requests += 1
        if worth_retrying(response):
            if response.status_code not in NOT_APPLIED_STATUS:
                maybe_applied = True
            failed(f"HTTP {response.status_code}", throttled=response.status_code == 429)
            asked = retry_after(response.headers)
            if asked is not None and limiter is not None:
                limiter.pause_for(asked)  # every lane of the account waits, not only this one
            raise RetryableResponse(response, asked)
        for budget in budgets:
            budget.answered = True
        return response

    started = time.monotonic()
    try:
        async for try_ in AsyncRetrying(
            retry=retry_if_exception(
                lambda exc: is_retryable(exc) and (resend or not _may_have_applied(exc))
            ),
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with try_:
                return await attempt()
    except RetryableResponse as exc:
        raise GiveUp(
            f"HTTP {exc.response.status_code} after {attempts} attempts in "
            f"{time.monotonic() - started:.0f} s",
            exc.response,
            maybe_applied=maybe_applied,
            attempts=attempts,
            seconds=time.monotonic() - started,
        ) from None
    except httpx.TransportError as exc:
        raise GiveUp(
            f"{exc.__class__.__name__} after {attempts} attempts: {_first_line(exc)}",
            unreachable=True,
            maybe_applied=maybe_applied,
            attempts=attempts,
            seconds=time.monotonic() - started,
        ) from None
    finally:
        if failing:
            for budget in budgets:
                budget.end_failing()
    raise AssertionError("unreachable")


def _may_have_applied(exc: BaseException) -> bool:
    if isinstance(exc, RetryableResponse):
        return exc.response.status_code not in NOT_APPLIED_STATUS
    return isinstance(exc, _AFTER_WRITE)


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)
