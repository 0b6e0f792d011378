"""Publisher confirms of a batch awaited as one future: what the broker's acks and nacks do to
it, side by side with aio-pika's own confirmed publishes on the same channel, and a channel that
closes under it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import pytest
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec

from gateway import amqp_confirms, amqp_reader
from gateway.amqp_confirms import AckRun, BatchConfirms
from gateway.amqp_frames import publish_many


@pytest.fixture
async def reader_connection(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A connection that reads with the gateway's FrameReader (confirms come in runs)."""
    amqp_reader.install()
    connection = await aio_pika.connect_robust(amqp_url)
    yield connection
    await connection.close()


async def test_a_batch_is_confirmed_when_every_tag_is_whatever_the_order(
    amqp_connection: Any,
) -> None:
    """Single acks in any order and multiple acks that cover parts of two batches each count
    their own tags; a nack fails its batch and no other; tags nobody expects are ignored."""
    channel = await amqp_connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        confirms = BatchConfirms()
        first, second, third = (underlay.create_future() for _ in range(3))
        confirms.expect(1, 3, first)
        confirms.expect(4, 2, second)
        confirms.expect(6, 2, third)
        confirms.confirm(2, False)
        confirms.confirm(99, False)  # nobody's: ignored
        assert not first.done()
        confirms.confirm(4, True)  # 1, 3 and 4
        assert first.done() and first.result() is None and not second.done()
        confirms.confirm(6, False, refused=True)
        assert isinstance(third.exception(), DeliveryError) and not second.done()
        confirms.confirm(7, False)  # the rest of a failed batch: no-op
        confirms.confirm(5, False)
        assert second.done() and second.result() is None
        assert not any(confirms.owns(tag) for tag in range(1, 8))
    finally:
        await channel.close()


async def test_batches_and_aio_pika_publishes_share_a_channel(reader_connection: Any) -> None:
    """Batches published with publish_many (half of them to no queue, confirmed at once, one ack
    frame each; half to a durable queue, confirmed after the disk write, often by multiple acks)
    and single aio-pika publishes, concurrently on one confirming channel: every one is
    confirmed, and those for the queue arrive."""
    channel = await reader_connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(f"test.confirms.{secrets.token_hex(4)}", durable=True)
    try:
        underlay = await channel.get_underlay_channel()
        batches = [
            [(queue.name if b % 2 else "nobody", f"b{b}-{i}".encode(), f"b{b}-{i}")
             for i in range(40)]
            for b in range(10)
        ]

        async def single(n: int) -> object:
            return await channel.default_exchange.publish(
                aio_pika.Message(f"s-{n}".encode()), routing_key=queue.name
            )

        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(publish_many(underlay, "", batch) for batch in batches),
                *(single(n) for n in range(30)),
            )
        assert results[:10] == [None] * 10
        assert all(isinstance(r, spec.Basic.Ack) for r in results[10:])
        declared = await underlay.queue_declare(queue.name, passive=True)
        assert declared.message_count == 5 * 40 + 30
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()


async def test_a_run_of_acks_settles_batches_and_aiormq_s_own_confirmations(
    amqp_connection: Any,
) -> None:
    """An AckRun (what the reader makes of ack frames read together) goes through the router
    frame by frame: the batches' tags to their BatchConfirms, aiormq's own pending confirmations
    (an aio-pika publish's) to aiormq, multiple acks included."""
    channel = await amqp_connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        confirms = amqp_confirms.confirms_for(underlay)
        batch, own, later = (underlay.create_future() for _ in range(3))
        confirms.expect(1, 2, batch)
        underlay.confirmations[3] = own  # as aiormq's basic_publish registers one
        confirms.expect(4, 2, later)
        await amqp_confirms._on_confirm_frame(underlay, AckRun.of([(2, False), (1, False)]))
        assert batch.done() and not own.done() and not later.done()
        await amqp_confirms._on_confirm_frame(underlay, AckRun.of([(4, True), (5, False)]))
        await asyncio.sleep(0)  # aiormq's set_result callbacks
        assert isinstance(own.result(), spec.Basic.Ack) and own.result().delivery_tag == 4
        assert later.done() and 3 not in underlay.confirmations
    finally:
        await channel.close()


async def test_a_channel_that_closes_fails_the_batch_waiting_for_its_confirms(
    amqp_connection: Any,
) -> None:
    """Publishing to an exchange that does not exist makes the broker close the channel: the
    batch fails with the channel's error instead of waiting for confirms that never come."""
    channel = await amqp_connection.channel(publisher_confirms=True)
    underlay = await channel.get_underlay_channel()
    missing = f"test.no-such-exchange.{secrets.token_hex(4)}"
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        async with asyncio.timeout(10):
            await publish_many(underlay, missing, [("k", b"{}", "m-1"), ("k", b"{}", "m-2")])
