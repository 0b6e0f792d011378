"""Jobs consumed straight off aiormq's channel: what a delivery carries, how it settles, and the
consumer registering itself again after the broker cut the connection or closed the channel."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.exceptions import MessageProcessError
from aiormq.exceptions import ChannelInvalidStateError
from structlog.testing import capture_logs

from gateway import amqp_acks
from gateway.amqp import AmqpBroker
from gateway.amqp_consumer import AmqpDelivery
from gateway.broker import JOB_QUEUES, JOBS_EXCHANGE, Delivery
from tests.conftest import QUEUE_TYPE, Amqp

TRANSACTIONAL, PROMOTIONAL = JOB_QUEUES  # queue names, in JOB_QUEUES order


class Received:
    """An ``on_delivery`` that keeps what arrives, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, AmqpDelivery]] = asyncio.Queue()

    def __call__(self, queue: str, delivery: Delivery) -> None:
        assert isinstance(delivery, AmqpDelivery)
        self.queue.put_nowait((queue, delivery))

    async def next(self, timeout: float = 20) -> tuple[str, AmqpDelivery]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def take(self, count: int, timeout: float = 20) -> list[AmqpDelivery]:
        return [(await self.next(timeout))[1] for _ in range(count)]

    async def nothing_more(self, wait: float = 0.7) -> None:
        await asyncio.sleep(wait)
        assert self.queue.empty(), f"{self.queue.qsize()} unexpected deliveries"


@pytest.fixture
async def connect_broker(
    request: pytest.FixtureRequest, clean: None, amqp_url: str
) -> AsyncIterator[Callable[..., Awaitable[AmqpBroker]]]:
    """Connect AmqpBrokers named after the test; closed at the end."""
    brokers: list[AmqpBroker] = []

    async def connect(prefetch: int = 10) -> AmqpBroker:
        broker = await AmqpBroker.connect(
            amqp_url, prefetch=prefetch, name=request.node.name, queue_type=QUEUE_TYPE
        )
        brokers.append(broker)
        return broker

    yield connect
    for broker in brokers:
        await broker.close()


async def _publish(amqp: Amqp, body: bytes, routing_key: str = "send.promotional",
                   headers: dict[str, Any] | None = None) -> None:
    """Publish a job; retried while the test's own connection reconnects after an outage."""
    for _ in range(300):
        try:
            exchange = await amqp.channel.get_exchange(JOBS_EXCHANGE)
            await exchange.publish(
                aio_pika.Message(body, headers=headers or {}), routing_key=routing_key
            )
            return
        except (ChannelInvalidStateError, aiormq.exceptions.AMQPConnectionError):
            await asyncio.sleep(0.1)
    pytest.fail("could not publish")


async def _queue_counts(amqp: Amqp, name: str) -> tuple[int, int]:
    """(messages ready, consumers) of a queue, as RabbitMQ says now; retried while reconnecting."""
    for _ in range(300):
        try:
            # On the underlying channel: a robust channel answers a passive declaration from its
            # cache.
            underlay = await amqp.channel.get_underlay_channel()
            declared = await underlay.queue_declare(name, passive=True)
            return declared.message_count or 0, declared.consumer_count or 0
        except (ChannelInvalidStateError, aiormq.exceptions.AMQPConnectionError):
            await asyncio.sleep(0.1)
    pytest.fail(f"could not read the counts of {name}")


async def _wait_for_one_consumer_each(amqp: Amqp) -> None:
    for _ in range(300):
        if [(await _queue_counts(amqp, q))[1] for q in JOB_QUEUES] == [1, 1]:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"consumers: {[(await _queue_counts(amqp, q))[1] for q in JOB_QUEUES]}")


def _close_all_connections(amqp_url: str) -> None:
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path[1:]) or "/"
    closed = subprocess.run(
        ["rabbitmqctl", "close_all_connections", "--vhost", vhost, "test: broker outage"],
        capture_output=True, timeout=60, check=False,
    )
    assert closed.returncode == 0, closed.stderr


async def test_a_delivery_carries_body_routing_key_and_headers(
    amqp: Amqp, connect_broker: Any
) -> None:
    """Each job arrives with its queue, body, routing key and headers; ack and ack_all settle it."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    await _publish(amqp, b'{"a":1}', "send.transactional", {"x-trace": "t-1", "n": 7})
    await _publish(amqp, b'{"b":2}', "send.promotional")

    got = {queue: delivery for queue, delivery in [await received.next(), await received.next()]}
    tx, promo = got[TRANSACTIONAL], got[PROMOTIONAL]
    assert (tx.body, tx.routing_key, tx.headers) == (
        b'{"a":1}', "send.transactional", {"x-trace": "t-1", "n": 7}
    )
    assert (promo.body, promo.routing_key, promo.headers) == (b'{"b":2}', "send.promotional", {})
    tx.headers["x-trace"] = "changed"
    assert tx.headers["x-trace"] == "t-1"  # a copy each time

    await tx.ack()
    with pytest.raises(MessageProcessError):
        await tx.ack()  # a second ack would cost the channel
    await broker.ack_all([promo])
    await broker.stop_consuming()
    for queue in JOB_QUEUES:
        assert await _queue_counts(amqp, queue) == (0, 0)


async def test_bodies_larger_than_a_frame_arrive_whole(
    amqp: Amqp, connect_broker: Any, amqp_url: str
) -> None:
    """A job body spread over several body frames (RabbitMQ's frame_max is 128 KiB) reaches the
    gateway's consumer whole, as does one of no bytes; and so it does for a plain aio-pika
    consumer on a connection that reads with the gateway's frame reader."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    big = bytes(range(256)) * 1200  # 300 KiB: three body frames
    await _publish(amqp, big)
    await _publish(amqp, b"")
    bodies = sorted(d.body for d in await received.take(2))
    assert bodies == [b"", big]
    await broker.stop_consuming()

    connection = await aio_pika.connect(amqp_url)  # opened after AmqpBroker.connect's install()
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        seen: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            seen.put_nowait(message.body)

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(big), routing_key=queue.name)
        assert await asyncio.wait_for(seen.get(), 20) == big
    finally:
        await connection.close()


async def test_a_failing_callback_is_logged_and_the_next_delivery_still_arrives(
    amqp: Amqp, connect_broker: Any
) -> None:
    """The callback runs on the connection's reading path: what it raises is logged, and the
    deliveries after it keep coming (the failed one stays unacked, as with aio-pika)."""
    broker = await connect_broker()
    received = Received()

    def on_delivery(queue: str, delivery: Delivery) -> None:
        if delivery.body == b"poison":
            raise RuntimeError("callback bug")
        received(queue, delivery)

    with capture_logs() as logs:
        await broker.consume(on_delivery)
        await _publish(amqp, b"poison")
        await _publish(amqp, b"fine")
        [after] = await received.take(1)
    assert after.body == b"fine"
    failed = [e for e in logs if e["event"] == "amqp.consumer_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == "error"
    await broker.ack_all([after])
    await broker.stop_consuming()


async def test_reject_with_requeue_redelivers_and_without_drops(
    amqp: Amqp, connect_broker: Any
) -> None:
    """reject(requeue=True) gives the job back, and it arrives again; requeue=False drops it."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    await _publish(amqp, b"job-1")

    queue, first = await received.next()
    await first.reject(requeue=True)
    again_queue, again = await received.next()
    assert (again_queue, again.body) == (queue, b"job-1")
    await again.reject(requeue=False)
    await received.nothing_more()
    await broker.stop_consuming()
    assert await _queue_counts(amqp, PROMOTIONAL) == (0, 0)


async def test_the_consumer_comes_back_after_the_broker_closes_every_connection(
    amqp: Amqp, connect_broker: Any, amqp_url: str
) -> None:
    """After close_all_connections the consumer registers itself again, with its prefetch, and
    the delivery it held comes back; the held delivery's channel is gone, so acking it fails."""
    broker = await connect_broker(prefetch=3)
    received = Received()
    await broker.consume(received)
    await _publish(amqp, b"held")
    [held] = await received.take(1)

    with capture_logs() as logs:
        await asyncio.to_thread(_close_all_connections, amqp_url)
        [back] = await received.take(1)  # redelivered to the restored consumer
        assert back.body == b"held"
        with pytest.raises(ChannelInvalidStateError):
            await broker.ack_all([held])
        with pytest.raises(ChannelInvalidStateError):
            await held.reject(requeue=True)
        await _wait_for_one_consumer_each(amqp)  # once each: not registered twice

        # The prefetch holds on the new channel: with `back` unacked, two more arrive of five.
        for i in range(5):
            await _publish(amqp, f"after-{i}".encode())
        after = await received.take(2)
        await received.nothing_more()
        await broker.ack_all([back, *after])
        after += await received.take(3)
        assert sorted(d.body for d in after) == [f"after-{i}".encode() for i in range(5)]
        await broker.ack_all(after[2:])
    assert {e["queue"] for e in logs if e["event"] == "amqp.consumer_restored"} == set(JOB_QUEUES)

    await broker.stop_consuming()
    for queue in JOB_QUEUES:
        assert await _queue_counts(amqp, queue) == (0, 0)


async def test_a_registration_cut_short_by_another_outage_is_done_again(
    amqp: Amqp, connect_broker: Any, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dropping while the consumer registers again: it registers after the next
    reconnection (the channel is not left counting itself restored without a consumer)."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    original = aiormq.Channel.basic_consume
    cut: list[str] = []

    async def basic_consume(self: aiormq.Channel, queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue == PROMOTIONAL and not cut:
            cut.append(queue)
            await asyncio.to_thread(_close_all_connections, amqp_url)
        return await original(self, queue, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_consume", basic_consume)
    with capture_logs() as logs:
        await asyncio.to_thread(_close_all_connections, amqp_url)
        await _wait_for_one_consumer_each(amqp)
        await _publish(amqp, b"after two outages")
        queue, delivery = await received.next()
    assert (queue, delivery.body, cut) == (PROMOTIONAL, b"after two outages", [PROMOTIONAL])
    assert any(
        e["event"] == "amqp.consume_failed" and e["queue"] == PROMOTIONAL for e in logs
    ), logs
    await broker.ack_all([delivery])
    await broker.stop_consuming()


async def test_a_channel_error_reopens_the_channel_and_a_refused_registration_is_retried(
    amqp: Amqp, connect_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel the broker closes (an ack of a tag it never delivered) reopens with its
    consumer; when the broker refuses that registration (NOT_FOUND here) it is tried again until
    it succeeds. The gateway's own acks refuse to settle a delivery twice."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    await _publish(amqp, b"acked twice")
    _, twice = await received.next()

    original = aiormq.Channel.basic_consume
    refused: list[str] = []

    async def basic_consume(self: aiormq.Channel, queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue == PROMOTIONAL and not refused:
            refused.append(queue)
            queue = "gateway.no-such-queue"  # the broker answers NOT_FOUND and closes the channel
        return await original(self, queue, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_consume", basic_consume)
    with capture_logs() as logs:
        await broker.ack_all([twice])
        with pytest.raises(MessageProcessError):
            await broker.ack_all([twice])
        # PRECONDITION_FAILED: unknown delivery tag
        await twice._message.channel.basic_ack(delivery_tag=99_999)
        for _ in range(100):
            if any(e["event"] == "amqp.consumer_restored" for e in logs):
                break
            await asyncio.sleep(0.1)
        await _wait_for_one_consumer_each(amqp)
        await _publish(amqp, b"after the channel error")
        queue, delivery = await received.next()
    assert (queue, delivery.body) == (PROMOTIONAL, b"after the channel error")
    assert refused == [PROMOTIONAL]
    events = [e["event"] for e in logs if e.get("queue") == PROMOTIONAL]
    assert events[-2:] == ["amqp.consume_failed", "amqp.consumer_restored"], events
    await broker.ack_all([delivery])
    await broker.stop_consuming()


async def test_stopped_consumers_stay_stopped_across_a_reconnection(
    amqp: Amqp, connect_broker: Any, amqp_url: str
) -> None:
    """stop_consuming, then an outage: the reconnected channels register no consumer."""
    broker = await connect_broker()
    received = Received()
    await broker.consume(received)
    await _wait_for_one_consumer_each(amqp)
    await broker.stop_consuming()
    await asyncio.to_thread(_close_all_connections, amqp_url)
    await _publish(amqp, b"nobody consumes this")
    await received.nothing_more(2.0)
    assert await _queue_counts(amqp, PROMOTIONAL) == (1, 0)


async def test_batches_settled_out_of_order_ack_only_what_they_hold(
    amqp: Amqp, connect_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's acks reach no further than the oldest delivery still unsettled: a later batch
    finishing first is acked tag by tag, an earlier one with one multiple ack, a rejected
    delivery is never covered by one; and the one left unsettled is the only one that comes
    back when the broker connection closes."""
    written: list[tuple[list[int], int | None]] = []
    real_ack_frames = amqp_acks.ack_frames

    def recording(channel: int, tags: list[int], *, multiple_up_to: int | None = None) -> bytes:
        written.append((list(tags), multiple_up_to))
        return real_ack_frames(channel, tags, multiple_up_to=multiple_up_to)

    monkeypatch.setattr(amqp_acks, "ack_frames", recording)
    broker = await connect_broker(prefetch=20)
    received = Received()
    await broker.consume(received)
    for n in range(12):
        await _publish(amqp, f"job-{n}".encode())
    d = await received.take(12)
    assert [x.body for x in d] == [f"job-{n}".encode() for n in range(12)]
    tags = [x._message.delivery_tag for x in d]

    await broker.ack_all(d[6:])  # a later batch first: d[0:6] are not settled
    await d[2].reject(requeue=False)
    await broker.ack_all(d[0:2])
    await broker.ack_all([d[4], d[3]])
    assert written == [(tags[6:], None), ([], tags[1]), ([], tags[4])]
    await received.nothing_more()  # the channel never failed: nothing was redelivered

    await broker.stop_consuming()
    await broker.close()  # d[5], never settled, goes back to the queue
    assert await _queue_counts(amqp, PROMOTIONAL) == (1, 0)
    underlay = await amqp.channel.get_underlay_channel()
    left = await underlay.basic_get(PROMOTIONAL, no_ack=True)
    assert left.body == b"job-5"
