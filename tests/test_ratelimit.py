"""Token buckets, keyed rate limits and the concurrency cap: arithmetic on a hand-stepped clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.ratelimit import ConcurrencyLimit, RateLimiter, TokenBucket


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_is_free_then_each_token_waits_one_interval() -> None:
    """A full bucket of 2 at 4/s lets two through at once, then one every 0.25 s, in call order."""
    clock = Clock()
    bucket = TokenBucket(4.0, 2, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0.25, 0.5, 0.75])


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    """After a long quiet spell the bucket holds only `burst` tokens, not more."""
    clock = Clock()
    bucket = TokenBucket(1.0, 3, clock=clock)
    for _ in range(3):
        bucket.reserve()
    clock.now += 3600
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])


def test_a_refunded_token_shortens_the_next_wait() -> None:
    """A cancelled waiter's token goes back, so the next caller is not charged for it."""
    clock = Clock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    bucket.reserve()
    assert bucket.reserve() == pytest.approx(1.0)
    bucket.refund()
    assert bucket.reserve() == pytest.approx(1.0)


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    """However calls are spaced, sends allowed by time t never exceed burst + rate × t."""
    clock = Clock()
    start = clock.now
    bucket = TokenBucket(rate, burst, clock=clock)
    send_times = []
    for step in steps:
        clock.now += step
        send_times.append(clock.now + bucket.reserve())
    assert send_times == sorted(send_times)  # first come, first served
    for index, at in enumerate(send_times):
        assert index + 1 <= burst + rate * (at - start) + 1e-6


def test_invalid_rates_are_refused() -> None:
    """A rate of zero or a burst below one is a configuration error, raised at construction."""
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 1, {"12345": 0})


def test_keys_have_their_own_buckets_and_overrides() -> None:
    """Each key gets its own bucket; an override sets that key's rate; others use the default."""
    clock = Clock()
    limiter = RateLimiter(1.0, 1, {"12345": 100.0}, clock=clock)
    assert limiter.bucket("+15005550001").reserve() == 0
    assert limiter.bucket("+15005550001").reserve() == pytest.approx(1.0)
    assert limiter.bucket("+15005550002").reserve() == 0
    assert limiter.bucket("12345").rate == 100.0
    assert limiter.bucket("+15005550002").rate == 1.0


async def test_waiting_on_one_key_does_not_block_another() -> None:
    """While one key's callers wait for tokens, another key's caller goes straight through."""
    limiter = RateLimiter(5.0, 1)
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def send(key: str, name: str) -> None:
        await limiter.acquire(key)
        order.append(name)

    started = loop.time()
    slow = [asyncio.create_task(send("a", f"a{i}")) for i in range(3)]
    await send("b", "b0")
    assert loop.time() - started < 0.1
    await asyncio.gather(*slow)
    assert [name for name in order if name.startswith("a")] == ["a0", "a1", "a2"]
    assert order.index("b0") < order.index("a1")


async def test_waiters_are_served_in_arrival_order() -> None:
    """Waiters on one bucket get their tokens in the order they asked."""
    bucket = TokenBucket(50.0, 1)
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(6)))
    assert order == list(range(6))


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    """Cancelling a waiter refunds its token, so the bucket is not left in debt."""
    bucket = TokenBucket(2.0, 1)
    await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.reserve() == pytest.approx(0.5, abs=0.05)


async def test_concurrency_limit_caps_holders() -> None:
    """No more than `limit` coroutines are inside the limit at once."""
    limit = ConcurrencyLimit(2)
    peak = 0

    async def work() -> None:
        nonlocal peak
        async with limit:
            peak = max(peak, limit.active)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(work() for _ in range(6)))
    assert peak == 2
    assert limit.active == 0
