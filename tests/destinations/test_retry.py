"""The retry policy against a loopback HTTP server: 429 and 5xx are retried with the server's
Retry-After honoured, a 4xx that cannot succeed is not, and giving up says why."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from reverse_etl.destinations.ratelimit import RateLimit, RateLimiter
from reverse_etl.destinations.retry import GiveUp, RetryPolicy, RetryStats, retry_after, send

FAST = RetryPolicy(attempts=5, initial_wait=0.01, max_wait=2.0, total_seconds=20)


def serve(httpserver: HTTPServer, answers: list[Response]) -> list[float]:
    """Answer requests to /batch with `answers` in order (the last one repeats); return the
    list the request times are appended to."""
    seen: list[float] = []

    def handler(request: Request) -> Response:
        seen.append(time.monotonic())
        return answers[min(len(seen), len(answers)) - 1]

    httpserver.expect_request("/batch", method="POST").respond_with_handler(handler)
    return seen


def post(
    httpserver: HTTPServer, limiter: RateLimiter | None = None, stats: RetryStats | None = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await send(
                lambda: client.post(httpserver.url_for("/batch"), json={"inputs": []}),
                limiter=limiter,
                policy=FAST,
                stats=stats,
            )

    return asyncio.run(go())


def test_a_429_is_retried_no_sooner_than_its_retry_after(httpserver: HTTPServer) -> None:
    seen = serve(
        httpserver,
        [
            Response("slow down", status=429, headers={"Retry-After": "1"}),
            Response("{}", status=200),
        ],
    )
    stats = RetryStats()

    response = post(httpserver, RateLimiter(RateLimit(per_second=50)), stats)

    assert response.status_code == 200
    assert len(seen) == 2 and seen[1] - seen[0] >= 1.0
    assert (stats.retries, stats.throttled) == (1, 1)


def test_a_5xx_is_retried_with_backoff(httpserver: HTTPServer) -> None:
    seen = serve(
        httpserver,
        [Response("oops", status=500), Response("oops", status=503), Response("{}", status=200)],
    )

    assert post(httpserver).status_code == 200
    assert len(seen) == 3


def test_a_4xx_that_cannot_succeed_is_not_retried(httpserver: HTTPServer) -> None:
    seen = serve(
        httpserver, [Response('{"message": "Property values were not valid"}', status=400)]
    )

    response = post(httpserver)

    assert response.status_code == 400 and len(seen) == 1


def test_giving_up_says_why(httpserver: HTTPServer) -> None:
    serve(httpserver, [Response("down", status=503)])

    with pytest.raises(GiveUp, match="HTTP 503 after 5 attempts"):
        post(httpserver)


def test_a_connection_that_fails_is_retried_then_given_up() -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            await send(lambda: client.post("http://127.0.0.1:9/nothing"), limiter=None, policy=FAST)

    with pytest.raises(GiveUp, match="ConnectError"):
        asyncio.run(go())


def test_retry_after_reads_seconds_dates_and_vendor_headers() -> None:
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert (
        retry_after(
            {
                "x-hubspot-ratelimit-remaining": "0",
                "x-hubspot-ratelimit-interval-milliseconds": "10000",
            }
        )
        == 10.0
    )
    assert retry_after({"x-hubspot-ratelimit-remaining": "5"}) is None
