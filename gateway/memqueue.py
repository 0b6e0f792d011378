"""An in-process broker for ``gateway dev`` ONLY: jobs live in memory and die with the process.

:class:`MemoryBroker` implements :class:`gateway.broker.Broker` with one :class:`asyncio.Queue`
per job queue, so dev mode runs without RabbitMQ. It keeps the parts of the contract the
pipeline relies on (routing by key, a per-queue prefetch, settle exactly once, requeue at the
back) and none of the durability: nothing is persisted, nothing is redelivered after a restart.
Never use it outside dev mode.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from gateway.broker import JOB_QUEUES, Delivery, OnDelivery

log = structlog.get_logger("gateway.memqueue")

# Routing key -> queue name: the bindings of the jobs exchange, read the other way round.
_QUEUE_FOR_KEY = {key: name for name, key in JOB_QUEUES.items()}
EVENTS_KEPT = 1000


class _Lane:
    """One job queue: its messages and the slots that bound its unsettled deliveries."""

    __slots__ = ("messages", "name", "slots")

    def __init__(self, name: str, prefetch: int) -> None:
        self.name = name
        self.messages: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        self.slots = asyncio.Semaphore(prefetch)


class MemoryDelivery:
    """A job taken from a :class:`MemoryBroker` queue; settle it exactly once."""

    __slots__ = ("_body", "_lane", "_routing_key", "_settled")

    def __init__(self, *, body: bytes, routing_key: str, lane: _Lane) -> None:
        self._body = body
        self._routing_key = routing_key
        self._lane = lane
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def routing_key(self) -> str:
        return self._routing_key

    @property
    def settled(self) -> bool:
        """Whether :meth:`ack` or :meth:`reject` has been called."""
        return self._settled

    async def ack(self) -> None:
        """Forget the job and free its prefetch slot."""
        self._settle()

    async def reject(self, *, requeue: bool) -> None:
        """Put the job back at the end of its queue (``requeue=True``) or drop it."""
        self._settle()
        if requeue:
            self._lane.messages.put_nowait((self._body, self._routing_key))

    def _settle(self) -> None:
        # RabbitMQ closes the channel on a double ack (PRECONDITION_FAILED); failing loudly here
        # catches the same bug in dev instead of letting the prefetch count drift.
        if self._settled:
            raise RuntimeError("delivery already settled")
        self._settled = True
        self._lane.slots.release()


class MemoryBroker:
    """The gateway's topology in memory. See the module docstring: dev mode only."""

    def __init__(self, *, prefetch: int = 200) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._lanes = {name: _Lane(name, prefetch) for name in JOB_QUEUES}
        self._consumers: list[asyncio.Task[None]] = []
        self._events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=EVENTS_KEPT)
        self.dead: list[tuple[str, bytes]] = []

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The last published events, oldest first, as ``(routing_key, decoded body)``."""
        return list(self._events)

    def depth(self, queue_name: str) -> int:
        """How many jobs wait in ``queue_name`` (handed-out deliveries not counted)."""
        return self._lanes[queue_name].messages.qsize()

    async def consume(self, on_delivery: OnDelivery) -> None:
        """Start one consumer task per job queue; ``on_delivery(queue_name, delivery)`` per job."""
        if self._consumers:
            raise RuntimeError("already consuming")
        self._consumers = [
            asyncio.create_task(self._consume(lane, on_delivery), name=f"memqueue:{name}")
            for name, lane in self._lanes.items()
        ]

    async def _consume(self, lane: _Lane, on_delivery: OnDelivery) -> None:
        while True:
            # The slot is taken before the message, so a job never waits outside its queue for
            # room: while the lane is full, everything stays in the queue, requeues included.
            await lane.slots.acquire()
            try:
                body, routing_key = await lane.messages.get()
            except BaseException:
                lane.slots.release()
                raise
            delivery: Delivery = MemoryDelivery(body=body, routing_key=routing_key, lane=lane)
            try:
                on_delivery(lane.name, delivery)
            except Exception:
                # As with aio-pika, a failing callback leaves the delivery unsettled and the
                # consumer running; the bug is logged, not allowed to stop the queue.
                log.exception("memqueue.on_delivery_failed", queue=lane.name)

    async def stop_consuming(self) -> None:
        """Cancel the consumer tasks; deliveries already handed out can still be settled."""
        consumers, self._consumers = self._consumers, []
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack each delivery."""
        for delivery in deliveries:
            await delivery.ack()

    async def publish_job(self, body: bytes, *, routing_key: str, message_id: str | None) -> None:
        """Queue a job on the queue bound to ``routing_key``; an unbound key drops it."""
        queue_name = _QUEUE_FOR_KEY.get(routing_key)
        if queue_name is None:
            # What a topic exchange does with a key no queue is bound to: the message is gone.
            log.warning("memqueue.unroutable", routing_key=routing_key, message_id=message_id)
            return
        self._lanes[queue_name].messages.put_nowait((body, routing_key))

    async def publish_events(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Keep the events (the last :data:`EVENTS_KEPT`) for :attr:`events`; log nothing."""
        for routing_key, body in events:
            self._events.append((routing_key, orjson.loads(body)))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keep ``(reason, body)`` in :attr:`dead` and log it; the delivery is not settled here."""
        self.dead.append((reason, delivery.body))
        log.warning("job.dead_lettered", reason=reason, routing_key=delivery.routing_key)

    async def ping(self) -> None:
        """Always reachable: it lives in this process."""

    async def close(self) -> None:
        """Stop the consumers. Queued and unsettled jobs are lost, as everything here is."""
        await self.stop_consuming()
