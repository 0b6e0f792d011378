"""The retry schedule, as data and one pure function."""

from __future__ import annotations

import random
from typing import Callable


def backoff_seconds(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before the attempt after ``failures`` transient failures (1 for the first).

    Exponential (``base``, ``2 × base``, ``4 × base`` … up to ``cap``) with "equal jitter": half
    of the step is fixed, half random, so a burst of failures does not retry in lockstep yet
    never retries sooner than half the step. A provider's ``Retry-After`` is a floor.
    """
    # The exponent is clamped so a huge failure count cannot overflow the float.
    step = min(cap, base * 2 ** min(max(0, failures - 1), 60))
    delay = step / 2 + rand() * step / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
