"""The consumer: gather deliveries into batches (B jobs or T ms), run them, shut down gracefully.

Each job queue has its own buffer, so a transactional batch never waits for promotional jobs.
While a batch of a queue runs, deliveries gather in the buffer, and the buffer is taken as one
batch the moment the running batch finishes. So batches grow with the load (one round trip per
statement serves more jobs as the rate rises) and the ``batch_wait`` timer only matters when
the queue is idle. A second batch (up to ``max_running``) starts beside a running one only for
a backlog: once half a batch is waiting, or once a delivery has waited ``stall`` (a slow
provider must not hold the queue). Two small batches at once cost the database two sets of
commits and the machine two sets of wake-ups for the jobs of one (bench/runs.md, the
evening of 2026-12-04). The broker's prefetch bounds how many jobs are in flight.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from gateway.broker import JOB_QUEUES, Broker, Delivery
from gateway.pipeline import BackendUnavailable, Pipeline

log = structlog.get_logger("gateway.intake")


class Intake:
    """Consumes both job queues into the pipeline. ``start`` then, on shutdown, ``stop``."""

    def __init__(
        self,
        *,
        broker: Broker,
        pipeline: Pipeline,
        batch_size: int,
        batch_wait_seconds: float,
        max_pause_seconds: float = 30.0,
        max_running: int = 2,
        stall_seconds: float = 0.1,
    ) -> None:
        self._broker = broker
        self._pipeline = pipeline
        self._batch_size = batch_size
        self._batch_wait = batch_wait_seconds
        self._buffers: dict[str, list[Delivery]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, int] = {}
        self._max_running = max_running
        self._backlog = max(1, batch_size // 2)
        self._stall = stall_seconds
        self._paused_until = 0.0
        self._pause = 0.0
        self._max_pause = max_pause_seconds

    @property
    def max_batches(self) -> int:
        """How many batches can run at once: ``max_running`` per job queue."""
        return self._max_running * len(JOB_QUEUES)

    @property
    def in_flight(self) -> int:
        """Deliveries received and not yet settled (buffered or in a running batch)."""
        return sum(len(b) for b in self._buffers.values()) + sum(
            getattr(t, "batch_len", 0) for t in self._tasks
        )

    async def start(self) -> None:
        """Start consuming."""
        await self._broker.consume(self._on_delivery)

    def _on_delivery(self, queue: str, delivery: Delivery) -> None:
        buffer = self._buffers.setdefault(queue, [])
        buffer.append(delivery)
        running = self._running.get(queue, 0)
        if running >= self._max_running:
            return  # taken when a running batch finishes
        if len(buffer) >= (self._backlog if running else self._batch_size):
            self._flush(queue)
        elif queue not in self._timers:
            self._start_timer(queue, self._stall if running else self._batch_wait)

    def _start_timer(self, queue: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers[queue] = loop.call_later(seconds, self._on_timer, queue)

    def _on_timer(self, queue: str) -> None:
        # batch_wait has passed on an idle queue, or stall behind a running batch.
        self._timers.pop(queue, None)
        if self._running.get(queue, 0) < self._max_running:
            self._flush(queue)

    def _flush(self, queue: str) -> None:
        """Start a batch of up to ``batch_size`` buffered deliveries of ``queue``."""
        timer = self._timers.pop(queue, None)
        if timer is not None:
            timer.cancel()
        buffer = self._buffers.get(queue)
        if not buffer:
            return
        batch, self._buffers[queue] = buffer[: self._batch_size], buffer[self._batch_size :]
        self._running[queue] = self._running.get(queue, 0) + 1
        task = asyncio.create_task(self._run(batch), name=f"batch:{queue}")
        task.batch_len = len(batch)  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(lambda t, q=queue: self._finished(t, q))

    def _finished(self, task: asyncio.Task[None], queue: str) -> None:
        self._tasks.discard(task)
        self._running[queue] -= 1
        buffered = len(self._buffers.get(queue) or ())
        if not buffered:
            return
        if self._running[queue] == 0 or buffered >= self._backlog:
            # What gathered meanwhile goes at once: waiting longer would only add latency.
            self._flush(queue)
        elif queue not in self._timers:
            self._start_timer(queue, self._stall)

    async def _run(self, batch: list[Delivery]) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._pipeline.process(batch)
        except BackendUnavailable as exc:
            # The batch is back in the queue. Wait before taking more, so an outage is ridden
            # out without a hot loop of redeliveries; the wait doubles once per failed try, not
            # once per batch of the many that fail together.
            now = time.monotonic()
            if now >= self._paused_until:
                self._pause = min(self._max_pause, max(0.5, self._pause * 2))
                self._paused_until = now + self._pause
                log.warning("intake.paused", reason=str(exc), seconds=self._pause)
            return
        except Exception:
            # A bug, or the broker went away mid-batch: unacked deliveries return to the queue
            # when the channel closes; here we only make sure the consumer keeps running.
            log.exception("intake.batch_failed", batch_size=len(batch))
            await _requeue_quietly(batch)
            return
        self._pause = 0.0

    async def stop(self, *, grace_seconds: float) -> None:
        """Stop consuming, finish in-flight batches within ``grace_seconds``, cancel the rest.

        Jobs of cancelled batches stay unacked, so the broker redelivers them.
        """
        await self._broker.stop_consuming()
        for queue in list(self._buffers):
            while self._buffers.get(queue):
                self._flush(queue)
        pending = set(self._tasks)
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=grace_seconds)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running)
            log.info(
                "intake.stopped",
                finished_batches=len(pending) - len(still_running),
                cancelled_batches=len(still_running),
            )


async def _requeue_quietly(batch: list[Delivery]) -> None:
    for delivery in batch:
        try:
            await delivery.reject(requeue=True)
        except Exception:  # already settled, or the channel is gone: the broker redelivers
            pass
