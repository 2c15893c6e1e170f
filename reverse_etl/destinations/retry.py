"""One retry policy for API connectors: exponential backoff with jitter on connection errors,
timeouts, 429 and 5xx; `Retry-After` (and vendor reset headers) honoured; a cap per wait and a
total cap; never a retry of a 4xx that cannot succeed.

`send` runs one request under the policy and the account's rate limiter. What it cannot get
through in time it raises as `GiveUp`, which a connector turns into per-record "retry later"
outcomes (neither acknowledged nor dead lettered) or a DestinationError.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from reverse_etl.destinations.ratelimit import RateLimiter

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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
        self, reason: str, response: httpx.Response | None = None, *, unreachable: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        # No answer at all (connection refused, timeouts): the destination is unreachable.
        self.unreachable = unreachable


@dataclass
class RetryStats:
    """What the requests of a run cost, for the run summary and the daily request budget:
    every request sent (retries included), the retries, and how many of them followed a 429."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0

    def as_counts(self) -> dict[str, int]:
        counts = {"requests": self.requests} if self.requests else {}
        if self.retries:
            counts.update(retries=self.retries, throttled=self.throttled)
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
) -> httpx.Response:
    """Send `request()` until it gets a response that is not worth retrying, honouring the
    limiter before every attempt and the server's Retry-After (which pauses the whole account).
    Returns that response (2xx, 207, or a 4xx the caller reports); raises GiveUp otherwise."""
    exponential = wait_exponential_jitter(
        multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.initial_wait
    )
    worth_retrying = retryable or (lambda r: r.status_code in RETRYABLE_STATUS)

    def wait(state: RetryCallState) -> float:
        backoff = float(exponential(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse) and exc.wait is not None:
            return min(max(exc.wait, 0.0), policy.max_wait)  # the limiter adds no more
        return backoff

    def before_sleep(state: RetryCallState) -> None:
        if stats is None:
            return
        stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse) and exc.response.status_code == 429:
            stats.throttled += 1
        stats.waited_seconds += state.upcoming_sleep

    async def attempt() -> httpx.Response:
        send = await limiter.acquire() if limiter is not None else None
        if stats is not None:
            stats.requests += 1
        try:
            response = await request()
        finally:
            if limiter is not None and send is not None:
                limiter.answered(send)
        if worth_retrying(response):
            asked = retry_after(response.headers)
            if asked is not None and limiter is not None:
                limiter.pause_for(asked)  # every lane of the account waits, not only this one
            raise RetryableResponse(response, asked)
        return response

    started = time.monotonic()
    try:
        async for try_ in AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            wait=wait,
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.total_seconds),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with try_:
                return await attempt()
    except RetryableResponse as exc:
        raise GiveUp(
            f"HTTP {exc.response.status_code} after {policy.attempts} attempts in "
            f"{time.monotonic() - started:.0f} s",
            exc.response,
        ) from None
    except httpx.TransportError as exc:
        raise GiveUp(
            f"{exc.__class__.__name__} after retries: {_first_line(exc)}", unreachable=True
        ) from None
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)
