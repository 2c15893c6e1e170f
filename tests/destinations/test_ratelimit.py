"""The account-wide rate limiter: no window ever holds more requests than the limit allows,
however many lanes or syncs draw from it, and a server's "wait" holds every caller back."""

from __future__ import annotations

from reverse_etl.destinations.ratelimit import RateLimit, RateLimiter, limiter_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_times(limiter: RateLimiter, clock: Clock, n: int) -> list[float]:
    """Reserve n requests back to back (as concurrent lanes would) and return their times."""
    return [clock.now + limiter.reserve() for _ in range(n)]


def test_per_second_spaces_requests_evenly() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=10), clock)

    times = send_times(limiter, clock, 5)

    assert [round(t - times[0], 3) for t in times] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_per_second_never_lets_a_second_hold_more_than_the_rate_even_with_jitter() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=20), clock)

    times = send_times(limiter, clock, 200)

    for i, start in enumerate(times):  # arrivals up to 50 ms late still fit the server's 1 s
        assert len([t for t in times[i:] if t < start + 1.0 + 0.05]) <= 20
    assert times[-1] - times[0] < 200 / 20 * 1.06  # and the rate is still almost all used


def test_no_window_holds_more_than_per_window_requests() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_window=100, window_seconds=10), clock)

    times = send_times(limiter, clock, 350)

    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t < start + 10]
        assert len(in_window) <= 100
    # a burst, then the next window (kept a little longer than the limit's, for jitter)
    assert times[99] == times[0] and 10 <= times[100] - times[0] <= 10.1


def test_a_server_pause_holds_back_every_caller() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=100), clock)
    limiter.pause_for(2.5)

    times = send_times(limiter, clock, 3)

    assert min(times) >= clock.now + 2.5


def test_syncs_writing_to_the_same_account_share_one_limiter() -> None:
    first = limiter_for("test-account-shared", RateLimit(per_second=5))
    second = limiter_for("test-account-shared", RateLimit(per_second=2))
    other = limiter_for("test-account-other", RateLimit(per_second=5))

    assert first is second
    assert first.limit.per_second == 2  # the stricter limit wins
    assert other is not first


def test_a_request_counts_until_its_answer_so_late_arrivals_never_crowd_a_window() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=2), clock)

    first = limiter.claim()
    second_wait, second = limiter.claim()
    clock.now += 0.5
    second = limiter.claim()
    held = limiter.claim()  # both in flight: no third slot in any second, however long
    clock.now += 5.0
    still = limiter.claim()
    assert first[1] is not None and second[1] is not None
    limiter.answered(first[1])  # answered at 1005.5: it may have arrived just now
    clock.now += 0.5
    early = limiter.claim()
    clock.now += 0.56
    freed = limiter.claim()

    assert second_wait == 0.5  # even spacing
    assert held[1] is None and 0 < held[0] <= 0.005
    assert still[1] is None  # a request in flight holds its slot
    assert early[1] is None and 0.5 < early[0] < 0.51  # its second (plus a trifle) runs on
    assert freed[1] is not None
