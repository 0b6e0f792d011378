"""Rate and concurrency limits for provider calls: token buckets, keyed buckets, a slot counter.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens a second; each
send takes one. It never polls: :meth:`TokenBucket.reserve` takes a token at once (the balance
may go below zero) and says how long the caller must wait until that token has been earned.
Reservations are made in call order and each waits at least as long as the one before it, so
waiters are served first come, first served, and a waiting coroutine only sleeps.

:class:`RateLimiter` keeps one bucket per key (an origination number, say), so waiting for one
key never delays another. :class:`ConcurrencyLimit` caps the requests in flight to a provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType


class TokenBucket:
    """``rate`` sends a second on average, up to ``burst`` at once after a quiet spell."""

    def __init__(
        self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be greater than 0")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def reserve(self) -> float:
        """Take one token now; return the seconds to wait before using it (0 if it is there)."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self) -> None:
        """Give back a reserved token that will not be used (its waiter was cancelled)."""
        self._refill()
        self._tokens = min(float(self.burst), self._tokens + 1)

    async def acquire(self) -> None:
        """Wait until this caller may send; callers go in the order they called."""
        wait = self.reserve()
        if wait <= 0:
            return
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            # The slot was never used: hand it back, or a cancelled batch would leave the
            # bucket in debt and slow every later send.
            self.refund()
            raise


class RateLimiter:
    """One :class:`TokenBucket` per key: ``overrides[key]`` sends a second, else ``default_rate``.

    Buckets are made on first use and kept: keys are our own origination numbers, a small set.
    """

    def __init__(
        self,
        default_rate: float,
        burst: int = 1,
        overrides: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not default_rate > 0:
            raise ValueError("default_rate must be greater than 0")
        for key, rate in (overrides or {}).items():
            if not rate > 0:
                raise ValueError(f"rate for {key!r} must be greater than 0")
        self.default_rate = default_rate
        self.burst = burst
        self._overrides = dict(overrides or {})
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, key: str) -> TokenBucket:
        """The bucket for ``key``, made on first use."""
        bucket = self._buckets.get(key)
        if bucket is None:
            rate = self._overrides.get(key, self.default_rate)
            bucket = self._buckets[key] = TokenBucket(rate, self.burst, clock=self._clock)
        return bucket

    async def acquire(self, key: str) -> None:
        """Wait for ``key``'s bucket only; other keys' waiters are not affected."""
        await self.bucket(key).acquire()


class ConcurrencyLimit:
    """At most ``limit`` holders at once: ``async with limit: ...``. Waiters queue FIFO."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self._active = 0

    @property
    def active(self) -> int:
        """How many holders are inside right now (for metrics and tests)."""
        return self._active

    async def __aenter__(self) -> None:
        await self._semaphore.acquire()
        self._active += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active -= 1
        self._semaphore.release()
