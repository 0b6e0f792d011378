"""Rate limit and circuit breaker around any sender, for providers without their own.

The Twilio adapter limits per origination number itself; push services get one bucket per
provider, shared by every in-flight send of the process, and one breaker.
"""

from __future__ import annotations

from typing import Any

from adapters.base import SendResult, Sender
from adapters.breaker import CircuitBreaker
from adapters.ratelimit import TokenBucket


class GuardedSender:
    """``inner`` behind a token bucket (``rate`` per second) and a circuit breaker."""

    def __init__(self, inner: Sender, *, rate: float, burst: int, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.channel = inner.channel
        self.breaker = breaker
        self._bucket = TokenBucket(rate, burst)

    async def send(self, message: Any) -> SendResult:
        """Fail fast while the breaker is open; wait for a token; send and let the breaker count."""
        self.breaker.check()
        await self._bucket.acquire()
        with self.breaker.guard():
            return await self.inner.send(message)

    async def close(self) -> None:
        """Close the inner sender."""
        await self.inner.close()
