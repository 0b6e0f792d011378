"""A circuit breaker per provider: stop calling a provider that keeps failing, try again later.

::

    closed ──N consecutive transient failures──▶ open
    open ──reset_after seconds──▶ half-open (one trial call is let through)
    half-open ──trial succeeds──▶ closed
    half-open ──trial fails──▶ open (for another reset_after)

While open (and while a half-open trial is in flight) :meth:`CircuitBreaker.check` raises
:class:`~adapters.errors.TransientSendError` with ``retry_after`` set to the time left, so the
pipeline defers the message instead of sending it into an outage. Only transient failures count:
a permanent refusal (an invalid number, say) means the provider is up and answering.

No I/O and no timers: the state is computed from an injected clock, so tests step time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

from adapters.errors import SendError, TransientSendError


class BreakerState(str, Enum):
    """Where the breaker is; ``value`` is what metrics and logs show."""

    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive transient failures, for ``reset_after`` s."""

    def __init__(
        self,
        failure_threshold: int,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        name: str = "provider",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after < 0:
            raise ValueError("reset_after must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.name = name
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open``, or ``half_open`` once ``reset_after`` has passed since opening."""
        if self._opened_at is None:
            return BreakerState.closed
        if self._clock() - self._opened_at >= self.reset_after:
            return BreakerState.half_open
        return BreakerState.open

    @property
    def failures(self) -> int:
        """Consecutive transient failures counted while closed."""
        return self._failures

    def _paused(self, retry_after: float) -> TransientSendError:
        return TransientSendError(
            f"provider {self.name} paused by circuit breaker", retry_after=retry_after
        )

    def check(self) -> None:
        """Raise ``TransientSendError`` if a call now would be refused; claim nothing."""
        if self._opened_at is None:
            return
        remaining = self._opened_at + self.reset_after - self._clock()
        if remaining > 0:
            raise self._paused(remaining)
        if self._trial_in_flight:
            # Another caller holds the one trial; its outcome decides. Come back after a
            # full period rather than pile onto a provider that may still be down.
            raise self._paused(self.reset_after)

    def admit(self) -> None:
        """:meth:`check`, then, when half-open, take the one trial slot until the outcome."""
        self.check()
        if self.state is BreakerState.half_open:
            self._trial_in_flight = True

    def record_success(self) -> None:
        """The provider answered: close (from half-open) and forget earlier failures."""
        if self.state is BreakerState.open:
            return  # a call that started before the breaker opened proves little
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A transient failure: count it while closed; a failed trial re-opens the breaker."""
        state = self.state
        if state is BreakerState.open:
            return  # already open; stragglers must not extend the pause
        if state is BreakerState.half_open:
            self._trial_in_flight = False
            self._opened_at = self._clock()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def release(self) -> None:
        """The admitted call ended without an outcome (cancelled): free the trial slot."""
        self._trial_in_flight = False

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Admit one call and record how it ended.

        ``TransientSendError`` counts as a failure; success or any other ``SendError`` (the
        provider answered) as a success; anything else, cancellation included, as neither.
        """
        self.admit()
        try:
            yield
        except TransientSendError:
            self.record_failure()
            raise
        except SendError:
            self.record_success()
            raise
        except BaseException:
            self.release()
            raise
        self.record_success()
