"""How the consumer cuts deliveries into batches: bounded running batches, growing with the load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.broker import Delivery
from gateway.intake import Intake
from gateway.memqueue import MemoryBroker

TX = "send.transactional"
PROMO = "send.promotional"


class GatedPipeline:
    """Records each batch; a batch finishes (and acks its jobs) only when the test opens its gate."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def process(self, batch: Sequence[Delivery]) -> None:
        self.batches.append([d.body for d in batch])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        for delivery in batch:
            await delivery.ack()


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker(prefetch=1000)
    yield broker
    await broker.close()


async def _publish(broker: MemoryBroker, key: str, bodies: Sequence[str]) -> None:
    for body in bodies:
        await broker.publish_job(body.encode(), routing_key=key, message_id=None)


async def _until(condition: object, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def _with_a_running_batch(
    broker: MemoryBroker, pipeline: GatedPipeline, job: str, *, batch_size: int, stall_seconds: float
) -> Intake:
    """An intake (two batches of a queue at most) whose first batch, ``job`` alone, is running."""
    intake = Intake(broker=broker, pipeline=pipeline, batch_size=batch_size,  # type: ignore[arg-type]
                    batch_wait_seconds=0.005, max_running=2, stall_seconds=stall_seconds)
    await intake.start()
    await _publish(broker, PROMO, [job])
    await asyncio.wait_for(pipeline.started.wait(), 2)
    return intake


async def test_jobs_that_arrive_while_batches_run_go_as_one_batch(broker: MemoryBroker) -> None:
    """With the running batches at their limit, later jobs wait and then go together, at once."""
    pipeline = GatedPipeline()
    intake = Intake(broker=broker, pipeline=pipeline, batch_size=100,  # type: ignore[arg-type]
                    batch_wait_seconds=0.005, max_running=1)
    await intake.start()
    await _publish(broker, PROMO, ["first"])
    await asyncio.wait_for(pipeline.started.wait(), 2)
    await _publish(broker, PROMO, [f"j{i}" for i in range(50)])
    await asyncio.sleep(0.05)  # ten batch windows: none of them may start a batch
    assert pipeline.batches == [[b"first"]]
    assert intake.in_flight == 51
    pipeline.gate.set()
    await _until(lambda: len(pipeline.batches) == 2 and intake.in_flight == 0)
    assert pipeline.batches[1] == [f"j{i}".encode() for i in range(50)]
    await intake.stop(grace_seconds=1)


async def test_running_batches_per_queue_are_bounded_and_sized(broker: MemoryBroker) -> None:
    """A backlog runs as at most ``max_running`` batches of at most ``batch_size`` jobs."""
    pipeline = GatedPipeline()
    intake = Intake(broker=broker, pipeline=pipeline, batch_size=10,  # type: ignore[arg-type]
                    batch_wait_seconds=0.005, max_running=2)
    await _publish(broker, PROMO, [f"j{i}" for i in range(95)])
    await intake.start()
    await _until(lambda: len(pipeline.batches) == 2)
    await asyncio.sleep(0.05)
    assert len(pipeline.batches) == 2 and pipeline.running == 2
    pipeline.gate.set()
    await _until(lambda: intake.in_flight == 0 and sum(map(len, pipeline.batches)) == 95)
    assert pipeline.most_running == 2
    assert max(map(len, pipeline.batches)) == 10
    assert sorted(b for batch in pipeline.batches for b in batch) == sorted(
        f"j{i}".encode() for i in range(95)
    )
    await intake.stop(grace_seconds=1)


async def test_a_second_batch_starts_beside_a_running_one_only_for_a_backlog(
    broker: MemoryBroker,
) -> None:
    """Behind a running batch, jobs wait for it until half a batch has gathered."""
    pipeline = GatedPipeline()
    intake = await _with_a_running_batch(broker, pipeline, "first", batch_size=10, stall_seconds=30)
    await _publish(broker, PROMO, ["a", "b", "c", "d"])
    await _until(lambda: intake.in_flight == 5)
    await asyncio.sleep(0.05)  # ten batch windows: four jobs are no backlog
    assert pipeline.batches == [[b"first"]]
    await _publish(broker, PROMO, ["e"])
    await _until(lambda: len(pipeline.batches) == 2)
    assert pipeline.batches[1] == [b"a", b"b", b"c", b"d", b"e"]
    assert pipeline.running == 2
    pipeline.gate.set()
    await _until(lambda: intake.in_flight == 0)
    await intake.stop(grace_seconds=1)


async def test_a_slow_batch_does_not_hold_its_queue_past_the_stall(broker: MemoryBroker) -> None:
    """A job behind a batch that does not finish (a hung provider) starts once it has waited
    ``stall``, as a second batch."""
    pipeline = GatedPipeline()
    intake = await _with_a_running_batch(broker, pipeline, "slow", batch_size=100, stall_seconds=0.3)
    await _publish(broker, PROMO, ["next"])
    await _until(lambda: intake.in_flight == 2)
    await asyncio.sleep(0.05)  # a timer never fires early: still waiting for the first batch
    assert pipeline.batches == [[b"slow"]]
    await _until(lambda: len(pipeline.batches) == 2)
    assert pipeline.batches[1] == [b"next"] and pipeline.running == 2
    pipeline.gate.set()
    await _until(lambda: intake.in_flight == 0)
    await intake.stop(grace_seconds=1)


async def test_a_busy_promotional_queue_does_not_hold_transactional_jobs(
    broker: MemoryBroker,
) -> None:
    """The bound is per queue: a transactional job starts while promotional batches are stuck."""
    pipeline = GatedPipeline()
    intake = Intake(broker=broker, pipeline=pipeline, batch_size=5,  # type: ignore[arg-type]
                    batch_wait_seconds=0.005, max_running=1)
    await intake.start()
    await _publish(broker, PROMO, [f"p{i}" for i in range(20)])
    await _until(lambda: len(pipeline.batches) == 1)
    await _publish(broker, TX, ["urgent"])
    await _until(lambda: [b"urgent"] in pipeline.batches)
    pipeline.gate.set()
    await _until(lambda: intake.in_flight == 0)
    await intake.stop(grace_seconds=1)


async def test_stop_runs_what_was_buffered(broker: MemoryBroker) -> None:
    """On shutdown, buffered jobs still run (within the grace period) rather than being dropped."""
    pipeline = GatedPipeline()
    intake = Intake(broker=broker, pipeline=pipeline, batch_size=100,  # type: ignore[arg-type]
                    batch_wait_seconds=0.005, max_running=1)
    await intake.start()
    await _publish(broker, PROMO, ["first"])
    await asyncio.wait_for(pipeline.started.wait(), 2)
    await _publish(broker, PROMO, ["a", "b", "c"])
    await _until(lambda: intake.in_flight == 4)
    pipeline.gate.set()
    await intake.stop(grace_seconds=2)
    assert sorted(b for batch in pipeline.batches for b in batch) == [b"a", b"b", b"c", b"first"]
    assert intake.in_flight == 0
