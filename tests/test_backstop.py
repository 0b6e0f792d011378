"""gateway/backstop.py: a coarse time limit for many awaits, with asyncio.timeout's meaning."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backstop import Backstop


async def test_an_await_past_its_deadline_is_cut_off_with_timeout_error() -> None:
    backstop = Backstop(0.1, resolution=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match="cut off after 0.1 s"):
        async with backstop():
            await asyncio.sleep(10)
    assert 0.1 <= loop.time() - started < 0.5
    # The task is not left cancelled: it goes on awaiting.
    await asyncio.sleep(0.01)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_awaits_that_finish_in_time_are_untouched_and_the_timer_stops() -> None:
    backstop = Backstop(0.2, resolution=0.02)

    async def quick(n: int) -> int:
        async with backstop():
            await asyncio.sleep(0.01)
        return n

    assert await asyncio.gather(*(quick(n) for n in range(50))) == list(range(50))
    await asyncio.sleep(0.05)  # one more check finds nothing guarded, and does not re-arm
    assert backstop._timer is None and not backstop._guards
    await asyncio.sleep(0.3)  # past the deadlines of the finished awaits: nothing happens
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_only_the_late_ones_are_cut_off() -> None:
    backstop = Backstop(0.1, resolution=0.02)

    async def wait(seconds: float) -> str:
        try:
            async with backstop():
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "cut"
        return "done"

    assert await asyncio.gather(wait(0.01), wait(5), wait(0.02), wait(5)) == [
        "done", "cut", "done", "cut"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    backstop = Backstop(0.1, resolution=0.02)

    async def guarded() -> None:
        async with backstop():
            await asyncio.sleep(10)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Backstop(0)
    assert Backstop(300).resolution == 1.0
    assert Backstop(2).resolution == pytest.approx(0.2)
