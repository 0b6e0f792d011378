"""The circuit breaker's states on an injected clock: no sleeping, no I/O."""

from __future__ import annotations

import asyncio

import pytest

from adapters.breaker import CircuitBreaker
from adapters.errors import PermanentSendError, TransientSendError


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state as metrics show it (a function call, so each read is fresh)."""
    return breaker.state.value


def opened(clock: Clock, threshold: int = 3, reset_after: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, reset_after, clock, name="twilio")
    for _ in range(threshold):
        breaker.record_failure()
    return breaker


def test_starts_closed_and_lets_calls_through() -> None:
    """A new breaker is closed and check() does not raise."""
    breaker = CircuitBreaker(3, 30.0, Clock())
    assert state(breaker) == "closed"
    breaker.check()


def test_opens_after_n_consecutive_transient_failures() -> None:
    """Only the N-th consecutive failure opens it; a success in between resets the count."""
    clock = Clock()
    breaker = CircuitBreaker(3, 30.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    breaker.record_failure()
    assert state(breaker) == "open"


def test_open_breaker_refuses_with_the_time_left() -> None:
    """While open, check() raises TransientSendError naming the provider, with the time left."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 10
    paused = "provider twilio paused by circuit breaker"
    with pytest.raises(TransientSendError, match=paused) as caught:
        breaker.check()
    assert caught.value.retry_after == pytest.approx(20.0)


def test_half_open_after_reset_lets_one_trial_through() -> None:
    """After reset_after it is half-open: the first caller is admitted, the next refused."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 30
    assert state(breaker) == "half_open"
    breaker.admit()
    with pytest.raises(TransientSendError) as caught:
        breaker.admit()
    assert caught.value.retry_after == 30.0


def test_successful_trial_closes() -> None:
    """A successful trial closes the breaker and clears the failure count."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 30
    breaker.admit()
    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.failures == 0
    breaker.check()


def test_failed_trial_reopens_for_another_period() -> None:
    """A failed trial opens the breaker again for a full reset_after from now."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 31
    breaker.admit()
    breaker.record_failure()
    assert state(breaker) == "open"
    clock.now += 29.9
    assert state(breaker) == "open"
    clock.now += 0.1
    assert state(breaker) == "half_open"


def test_stragglers_do_not_extend_or_end_the_pause() -> None:
    """Outcomes of calls that began before it opened change nothing while it is open."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 20
    breaker.record_failure()
    breaker.record_success()
    assert state(breaker) == "open"
    clock.now += 10
    assert state(breaker) == "half_open"


def test_guard_counts_transient_errors_only() -> None:
    """Inside guard(), TransientSendError counts as a failure; PermanentSendError as an answer."""
    breaker = CircuitBreaker(2, 30.0, Clock())
    for _ in range(5):
        with pytest.raises(PermanentSendError), breaker.guard():
            raise PermanentSendError("invalid number")
    assert state(breaker) == "closed"
    for _ in range(2):
        with pytest.raises(TransientSendError), breaker.guard():
            raise TransientSendError("503")
    assert state(breaker) == "open"


def test_cancelled_trial_frees_the_slot() -> None:
    """A trial cancelled mid-call neither closes nor re-opens; the next caller may try."""
    clock = Clock()
    breaker = opened(clock)
    clock.now += 30
    with pytest.raises(asyncio.CancelledError), breaker.guard():
        raise asyncio.CancelledError
    assert state(breaker) == "half_open"
    with breaker.guard():
        pass
    assert state(breaker) == "closed"


def test_invalid_configuration_is_refused() -> None:
    """A threshold below one is a configuration error."""
    with pytest.raises(ValueError):
        CircuitBreaker(0, 30.0)
