"""The queue boundary: what the consumer and the publishers need of a message broker.

Two implementations: :mod:`gateway.amqp` (RabbitMQ, always outside dev mode) and
:mod:`gateway.memqueue` (an in-process queue for ``gateway dev`` only).

Names of the AMQP topology, a public contract::

    exchange gateway.jobs (topic) ─ send.transactional ─▶ queue gateway.send.transactional
                                  └ send.promotional  ─▶ queue gateway.send.promotional
    queue gateway.dead                   jobs that can never be processed, header x-gateway-error
    exchange gateway.events (topic)      every outcome, routing key message.<status>
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

JOBS_EXCHANGE = "gateway.jobs"
EVENTS_EXCHANGE = "gateway.events"
DEAD_QUEUE = "gateway.dead"
ERROR_HEADER = "x-gateway-error"
# Queue name -> routing key. Transactional first: it is consumed with its own prefetch so a
# promotional backlog never holds it up.
JOB_QUEUES = {
    "gateway.send.transactional": "send.transactional",
    "gateway.send.promotional": "send.promotional",
}


def routing_key_for(kind: str) -> str:
    """``send.transactional`` or ``send.promotional``."""
    return f"send.{kind}"


def kind_from_routing_key(routing_key: str) -> str | None:
    """The job kind a routing key names, or ``None`` for a key we do not bind."""
    prefix, _, kind = routing_key.partition(".")
    return kind if prefix == "send" and kind in ("transactional", "promotional") else None


class Delivery(Protocol):
    """One job as delivered by the broker; settled exactly once with ``ack`` or ``reject``."""

    @property
    def body(self) -> bytes: ...

    @property
    def routing_key(self) -> str: ...

    async def ack(self) -> None:
        """The job's outcome is recorded: the broker may forget it."""

    async def reject(self, *, requeue: bool) -> None:
        """Give the job back to the queue (``requeue=True``) or drop it."""


# Called once per job, on the connection's reading path: it must not block (it buffers).
OnDelivery = Callable[[str, Delivery], None]


class Broker(Protocol):
    """A connected broker with the gateway's topology declared."""

    async def consume(self, on_delivery: OnDelivery) -> None:
        """Start consuming both job queues; ``on_delivery(queue_name, delivery)`` per job."""

    async def stop_consuming(self) -> None:
        """Cancel the consumers; deliveries already received stay ours to settle."""

    async def publish_job(self, body: bytes, *, routing_key: str, message_id: str | None) -> None:
        """Publish a job to ``gateway.jobs`` (persistent, confirmed)."""

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack every delivery (their outcomes are recorded), in as few writes as the broker allows."""

    async def publish_events(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(routing_key, body)`` events to ``gateway.events``."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy a job that can never be processed to ``gateway.dead`` with its reason."""

    async def ping(self) -> None:
        """Raise if the broker is unreachable."""

    async def close(self) -> None:
        """Close channels and the connection; unsettled deliveries return to their queue."""
