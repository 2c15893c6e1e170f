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
from reverse_etl.destinations.retry import (
    GiveUp,
    RetryBudget,
    RetryPolicy,
    RetryStats,
    retry_after,
    send,
)

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


def send_with(
    url: str,
    *,
    policy: RetryPolicy = FAST,
    stats: RetryStats | None = None,
    budgets: tuple[RetryBudget, ...] = (),
    timeout: float = 5.0,
    resend: bool = True,
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await send(
                lambda: client.post(url, json={"inputs": []}),
                limiter=None,
                policy=policy,
                stats=stats,
                budgets=budgets,
                resend=resend,
            )

    return asyncio.run(go())


def test_a_refused_connection_is_an_attempt_not_a_request() -> None:
    stats = RetryStats()
    budget = RetryBudget(None)

    with pytest.raises(GiveUp) as gave_up:
        send_with("http://127.0.0.1:9/nothing", stats=stats, budgets=(budget,))

    assert (stats.requests, stats.attempts) == (0, 5)
    assert stats.as_counts()["attempts"] == 5 and "requests" not in stats.as_counts()
    assert not gave_up.value.maybe_applied and gave_up.value.attempts == 5
    assert not budget.answered and "ConnectError" in budget.last_error


def test_a_retry_budget_ends_the_retries_once_spent(httpserver: HTTPServer) -> None:
    seen = serve(httpserver, [Response("down", status=503)])
    budget = RetryBudget(1.0)
    patient = RetryPolicy(attempts=1000, initial_wait=0.1, max_wait=0.2, total_seconds=600)
    started = time.monotonic()

    with pytest.raises(GiveUp, match="HTTP 503") as gave_up:
        send_with(httpserver.url_for("/batch"), policy=patient, budgets=(budget,))

    assert time.monotonic() - started < 10  # generous: the budget is 1 s
    assert budget.exhausted and 2 <= len(seen) < 100 and budget.attempts == len(seen)
    assert not gave_up.value.maybe_applied  # a 503 says the request was not processed


def test_a_500_may_have_been_applied(httpserver: HTTPServer) -> None:
    serve(httpserver, [Response("oops", status=500)])

    with pytest.raises(GiveUp) as gave_up:
        send_with(httpserver.url_for("/batch"))

    assert gave_up.value.maybe_applied


def test_a_lost_answer_may_have_been_applied_and_is_not_resent_unless_allowed(
    httpserver: HTTPServer,
) -> None:
    seen: list[float] = []

    def slow(request: Request) -> Response:
        seen.append(time.monotonic())
        time.sleep(0.6)
        return Response("{}", status=200)

    httpserver.expect_request("/batch", method="POST").respond_with_handler(slow)
    stats = RetryStats()

    with pytest.raises(GiveUp) as gave_up:
        send_with(httpserver.url_for("/batch"), stats=stats, timeout=0.2, resend=False)

    assert gave_up.value.maybe_applied and "ReadTimeout" in gave_up.value.reason
    assert len(seen) == 1 and stats.requests == 1  # written once, never sent again


def test_a_healthy_request_spends_no_budget(httpserver: HTTPServer) -> None:
    serve(httpserver, [Response("{}", status=200)])
    budget = RetryBudget(0.001)

    assert send_with(httpserver.url_for("/batch"), budgets=(budget,)).status_code == 200
    assert budget.answered and budget.spent() == 0.0 and not budget.exhausted


def test_waits_a_429_asks_for_spend_no_budget(httpserver: HTTPServer) -> None:
    slow_down = Response("slow down", status=429, headers={"Retry-After": "1"})
    seen = serve(httpserver, [slow_down, slow_down, Response("{}", status=200)])
    budget = RetryBudget(0.5)  # shorter than the waits the server asks for

    response = send_with(httpserver.url_for("/batch"), budgets=(budget,))

    assert response.status_code == 200 and len(seen) == 3
    assert budget.spent() == 0.0 and budget.answered
