"""A token bucket and a breaker around a sender: the push services' guard."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from adapters.base import SendResult
from adapters.breaker import BreakerState, CircuitBreaker
from adapters.errors import PermanentSendError, TransientSendError
from adapters.guarded import GuardedSender


class Provider:
    """A sender that answers as told and records when each call arrived."""

    channel = "push"

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.fail_with: Exception | None = None

    async def send(self, message: Any) -> SendResult:
        self.calls.append(time.monotonic())
        if self.fail_with is not None:
            raise self.fail_with
        return SendResult("ok")

    async def close(self) -> None:
        pass


async def test_rate_limit_spaces_sends() -> None:
    """At 20 per second with a burst of 1, six sends take at least a quarter second."""
    provider = Provider()
    guarded = GuardedSender(provider, rate=20, burst=1, breaker=CircuitBreaker(5, 1.0))
    await asyncio.gather(*(guarded.send(object()) for _ in range(6)))
    assert provider.calls[-1] - provider.calls[0] >= 0.24


async def test_breaker_opens_after_transient_failures_and_stops_calls() -> None:
    """Three transient failures open the breaker: the fourth send fails without a call."""
    provider = Provider()
    provider.fail_with = TransientSendError("503")
    guarded = GuardedSender(provider, rate=1000, burst=10, breaker=CircuitBreaker(3, 60.0, name="fcm"))
    for _ in range(3):
        with pytest.raises(TransientSendError):
            await guarded.send(object())
    with pytest.raises(TransientSendError, match="provider fcm paused by circuit breaker"):
        await guarded.send(object())
    assert len(provider.calls) == 3
    assert guarded.breaker.state is BreakerState.open


async def test_breaker_closes_after_a_good_trial() -> None:
    """After the reset period one trial goes through; its success closes the breaker."""
    provider = Provider()
    provider.fail_with = TransientSendError("503")
    guarded = GuardedSender(provider, rate=1000, burst=10, breaker=CircuitBreaker(1, 0.1))
    with pytest.raises(TransientSendError):
        await guarded.send(object())
    await asyncio.sleep(0.15)
    provider.fail_with = None
    assert (await guarded.send(object())).provider_message_id == "ok"
    assert guarded.breaker.state is BreakerState.closed


async def test_permanent_refusals_do_not_open_the_breaker() -> None:
    """A provider that answers 'no' is up: permanent refusals keep the breaker closed."""
    provider = Provider()
    provider.fail_with = PermanentSendError("bad token")
    guarded = GuardedSender(provider, rate=1000, burst=10, breaker=CircuitBreaker(2, 60.0))
    for _ in range(5):
        with pytest.raises(PermanentSendError):
            await guarded.send(object())
    assert guarded.breaker.state is BreakerState.closed
