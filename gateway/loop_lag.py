"""How late the event loop runs what is due: the health figure of a single-loop process.

Every job's claim, sends, record and acks are awaits on one event loop; when the loop is busy,
each of them waits for whatever runs before it, and that wait, repeated a dozen times per
batch, is most of a job's latency at high load (bench/runs.md). :func:`watch_loop_lag`
sleeps ``interval`` seconds at a time and observes how much later than asked it woke, into
``gateway_event_loop_lag_seconds``. It costs one timer per interval.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

__all__ = ["watch_loop_lag"]


async def watch_loop_lag(histogram: Histogram, *, interval: float = 0.25) -> None:
    """Observe the loop's lag into ``histogram`` every ``interval`` seconds until cancelled."""
    clock = time.perf_counter
    while True:
        asked = clock() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, clock() - asked))
