"""RabbitMQ through aio-pika: a robust connection, the topology declared idempotently at start.

One channel per job queue, each with its own prefetch, so transactional jobs never wait behind a
promotional backlog; one channel with publisher confirms for everything we publish.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from gateway.broker import (
    DEAD_QUEUE,
    ERROR_HEADER,
    EVENTS_EXCHANGE,
    JOB_QUEUES,
    JOBS_EXCHANGE,
    OnDelivery,
)

log = structlog.get_logger(__name__)


class AmqpDelivery:
    """An aio-pika message seen through the :class:`gateway.broker.Delivery` protocol."""

    __slots__ = ("_message",)

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def routing_key(self) -> str:
        return self._message.routing_key or ""

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self._message.headers or {})

    async def ack(self) -> None:
        await self._message.ack()

    async def reject(self, *, requeue: bool) -> None:
        await self._message.reject(requeue=requeue)


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
    ) -> None:
        self._connection = connection
        self._publish_channel = publish_channel
        self._jobs = jobs
        self._events = events
        self._prefetch = prefetch
        self._consumers: list[tuple[AbstractQueue, str]] = []

    @classmethod
    async def connect(cls, url: str, *, prefetch: int, name: str = "gateway") -> "AmqpBroker":
        """Connect (robustly: it reconnects by itself) and declare the topology."""
        connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        channel = await connection.channel(publisher_confirms=True)
        jobs, events = await declare_topology(channel)
        return cls(
            connection=connection,
            publish_channel=channel,
            jobs=jobs,
            events=events,
            prefetch=prefetch,
        )

    async def consume(self, on_delivery: OnDelivery) -> None:
        for queue_name in JOB_QUEUES:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            # Declared (not just looked up) on this channel so the robust channel restores the
            # consumer after a reconnection.
            queue = await channel.declare_queue(queue_name, durable=True)

            async def callback(message: AbstractIncomingMessage, _q: str = queue_name) -> None:
                await on_delivery(_q, AmqpDelivery(message))

            tag = await queue.consume(callback)
            self._consumers.append((queue, tag))

    async def stop_consuming(self) -> None:
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # the channel may already be gone: nothing left to cancel
                log.warning("amqp.cancel_failed", queue=queue.name, error=str(exc))

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
        # Confirms are awaited together: one broker round trip for the batch, not one per event.
        await asyncio.gather(
            *(
                self._events.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=key,
                )
                for key, body in events
            )
        )

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
        await self._connection.close()


async def declare_topology(channel: AbstractChannel) -> tuple[AbstractExchange, AbstractExchange]:
    """Declare exchanges, queues and bindings; safe to repeat (declarations are idempotent)."""
    jobs = await channel.declare_exchange(JOBS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    for queue_name, routing_key in JOB_QUEUES.items():
        queue = await channel.declare_queue(queue_name, durable=True)
        await queue.bind(jobs, routing_key=routing_key)
    await channel.declare_queue(DEAD_QUEUE, durable=True)
    return jobs, events
