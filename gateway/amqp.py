"""RabbitMQ through aio-pika: a robust connection, the topology declared idempotently at start.

One channel per job queue, each with its own prefetch, so transactional jobs never wait behind a
promotional backlog; one channel with publisher confirms for everything we publish. Jobs are
consumed straight off aiormq's channel (:class:`JobConsumer`), without aio-pika's per-message
``IncomingMessage`` and second task; the consumer registers itself again whenever aio-pika's
robust channel reopens.

The gateway's queues are declared durable with one argument, ``x-queue-type`` (``classic`` or
``quorum``, from ``GATEWAY_AMQP_QUEUE_TYPE``), and nothing else: quorum queues refuse the
classic-only arguments (``x-max-priority``, ``x-queue-mode``, non-durable, exclusive). RabbitMQ
never changes the type of an existing queue; a declaration that disagrees is refused with
PRECONDITION_FAILED, which :class:`QueueTypeMismatch` turns into a one-line startup error.

Exceptions::

    ConfigError (gateway.settings)
    └── QueueTypeMismatch    a gateway queue exists with another type (or other arguments)
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any, Literal, Sequence, cast

import aio_pika
import aio_pika.exceptions
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from gateway import amqp_reader
from gateway.amqp_acks import AckLedger
from gateway.amqp_consumer import AmqpDelivery, JobConsumer
from gateway.amqp_frames import publish_many
from gateway.broker import (
    Delivery,
    DEAD_QUEUE,
    ERROR_HEADER,
    EVENTS_EXCHANGE,
    JOB_QUEUES,
    JOBS_EXCHANGE,
    OnDelivery,
)
from gateway.settings import ConfigError

log = structlog.get_logger(__name__)

QueueType = Literal["classic", "quorum"]


class QueueTypeMismatch(ConfigError):
    """Raised at start when RabbitMQ refuses to declare a gateway queue as configured.

    Almost always: the queue exists with the other type than ``GATEWAY_AMQP_QUEUE_TYPE`` names
    (RabbitMQ cannot convert a queue; see docs/deploy.md for the migration).
    """

    def __init__(self, queue: str, queue_type: str, reason: str) -> None:
        super().__init__(
            f"configuration error: GATEWAY_AMQP_QUEUE_TYPE={queue_type} does not match the"
            f" existing queue {queue} (RabbitMQ: {reason}); set it to the queue's type, or move"
            " the queues over as docs/deploy.md describes (Switching queue types)"
        )
        self.queue = queue


def queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    """The declaration arguments of every gateway queue (``x-queue-type`` only)."""
    return {"x-queue-type": queue_type}


async def declare_queue(
    channel: AbstractChannel, name: str, *, queue_type: QueueType
) -> AbstractQueue:
    """Declare one of the gateway's queues: durable, of ``queue_type``."""
    try:
        return await channel.declare_queue(
            name, durable=True, arguments=queue_arguments(queue_type)
        )
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        # Only the reason: the traceback of a refused declaration says nothing more.
        raise QueueTypeMismatch(name, queue_type, " ".join(str(exc).split())) from None


class AmqpBroker:
    """The gateway's view of RabbitMQ. Build it with :meth:`connect`."""

    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        publish_channel: AbstractChannel,
        jobs: AbstractExchange,
        events: AbstractExchange,
        prefetch: int,
        queue_type: QueueType = "classic",
    ) -> None:
        self._connection = connection
        self._publish_channel = publish_channel
        self._jobs = jobs
        self._events = events
        self._prefetch = prefetch
        self._queue_type: QueueType = queue_type
        self._consumers: list[JobConsumer] = []
        # Event message ids: unique per process and batch, without a uuid per event.
        self._event_prefix = f"ev-{os.getpid()}-{id(self):x}-"
        self._event_ids = itertools.count()

    @classmethod
    async def connect(
        cls, url: str, *, prefetch: int, name: str = "gateway", queue_type: QueueType = "classic"
    ) -> "AmqpBroker":
        """Connect (robustly: it reconnects by itself) and declare the topology.

        Raises :class:`QueueTypeMismatch` if a queue exists with another type than ``queue_type``.
        """
        amqp_reader.install()  # this connection's frames, and its reconnections', read leaner
        connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        try:
            channel = await connection.channel(publisher_confirms=True)
            jobs, events = await declare_topology(channel, queue_type=queue_type)
        except BaseException:
            await connection.close()
            raise
        return cls(
            connection=connection,
            publish_channel=channel,
            jobs=jobs,
            events=events,
            prefetch=prefetch,
            queue_type=queue_type,
        )

    async def consume(self, on_delivery: OnDelivery) -> None:
        for queue_name in JOB_QUEUES:
            # A robust channel: on reopening it restores this qos and declaration before the
            # consumer registers again (JobConsumer).
            channel = cast(aio_pika.RobustChannel, await self._connection.channel())
            await channel.set_qos(prefetch_count=self._prefetch)
            await declare_queue(channel, queue_name, queue_type=self._queue_type)
            consumer = JobConsumer(channel, queue_name, on_delivery)
            await consumer.start()
            self._consumers.append(consumer)

    async def stop_consuming(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.stop()

    async def publish_job(self, body: bytes, *, routing_key: str, message_id: str | None) -> None:
        await self._jobs.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            ),
            routing_key=routing_key,
        )

    async def publish_events(self, events: Sequence[tuple[str, bytes]]) -> None:
        # All of a batch's events in one write, confirmed together (gateway.amqp_frames).
        # Not mandatory: with no queue bound to gateway.events the broker drops an event, where
        # a mandatory publish would come back to us to be parsed and dropped. Our own message
        # ids spare a uuid4 per event.
        if not events:
            return
        channel = await self._publish_channel.get_underlay_channel()
        base = f"{self._event_prefix}{next(self._event_ids)}."
        await publish_many(
            channel,
            self._events.name,
            [(key, body, f"{base}{index}") for index, (key, body) in enumerate(events)],
        )

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        # One write per channel for the whole batch, with one multiple ack where the batch's
        # deliveries are the oldest unsettled ones (gateway.amqp_acks).
        by_channel: dict[AckLedger, list[int]] = {}
        for delivery in deliveries:
            if not isinstance(delivery, AmqpDelivery):
                await delivery.ack()
                continue
            ledger, tag = delivery.take()
            by_channel.setdefault(ledger, []).append(tag)
        if len(by_channel) == 1:
            [(ledger, tags)] = by_channel.items()
            await ledger.ack(tags)
        elif by_channel:
            await asyncio.gather(*(ledger.ack(tags) for ledger, tags in by_channel.items()))

    async def dead_letter(self, delivery: Any, reason: str) -> None:
        headers = dict(getattr(delivery, "headers", {}) or {})
        headers[ERROR_HEADER] = reason
        headers["x-gateway-routing-key"] = delivery.routing_key
        await self._publish_channel.default_exchange.publish(
            aio_pika.Message(
                delivery.body,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/octet-stream",
            ),
            routing_key=DEAD_QUEUE,
        )

    async def ping(self) -> None:
        if self._connection.is_closed or self._publish_channel.is_closed:
            raise ConnectionError("AMQP connection is closed")

    async def close(self) -> None:
        for consumer in self._consumers:
            consumer.detach()
        await self._connection.close()


async def declare_topology(
    channel: AbstractChannel, *, queue_type: QueueType = "classic"
) -> tuple[AbstractExchange, AbstractExchange]:
    """Declare exchanges, queues and bindings; safe to repeat (declarations are idempotent)."""
    jobs = await channel.declare_exchange(JOBS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    for queue_name, routing_key in JOB_QUEUES.items():
        queue = await declare_queue(channel, queue_name, queue_type=queue_type)
        await queue.bind(jobs, routing_key=routing_key)
    await declare_queue(channel, DEAD_QUEUE, queue_type=queue_type)
    return jobs, events
