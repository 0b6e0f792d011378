"""Batched acks and publishes: byte-for-byte AMQP framing, and their effect on a real broker."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aio_pika
import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from gateway.amqp_acks import AckLedger
from gateway.amqp_frames import ack_frames, publish_frames, publish_many


def _pamqp_publish(channel: int, exchange: str, key: str, body: bytes, message_id: str,
                   max_body: int) -> bytes:
    """What aiormq's own basic_publish puts on the wire for the same message."""
    chunks = [body[i : i + max_body] for i in range(0, len(body), max_body)]
    frames: list[Any] = [
        spec.Basic.Publish(exchange=exchange, routing_key=key),
        ContentHeader(
            properties=spec.Basic.Properties(
                content_type="application/json", delivery_mode=2, message_id=message_id
            ),
            body_size=len(body),
        ),
        *(ContentBody(c) for c in chunks),
    ]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 350])
@pytest.mark.parametrize("key", ["message.sent", "endpoint.token_invalid", "clé.ü", "k" * 255])
def test_publish_frames_are_what_pamqp_marshals(size: int, key: str) -> None:
    """Method, header and body frames (bodies cut at the frame limit) equal pamqp's bytes."""
    body = bytes(range(256))[:size] if size <= 256 else secrets.token_bytes(size)
    messages = [(key, body, "ev-1-a.0"), ("message.failed", b'{"x":1}', "ev-1-a.1")]
    expected = b"".join(
        _pamqp_publish(7, "gateway.events", k, b, m, max_body=100) for k, b, m in messages
    )
    got = publish_frames(7, "gateway.events", messages, content_type="application/json",
                         max_body_frame=100)
    assert got == expected


def test_ack_frames_are_what_pamqp_marshals() -> None:
    """One non-multiple basic.ack per tag, then the multiple one, as pamqp marshals them."""
    tags = [1, 2, 255, 65_536, 2**40]
    expected = ChannelFrame.marshall(
        channel_number=3, frames=[spec.Basic.Ack(delivery_tag=t) for t in tags]
    ).payload
    assert ack_frames(3, tags) == expected
    with_multiple = ChannelFrame.marshall(
        channel_number=3,
        frames=[*(spec.Basic.Ack(delivery_tag=t) for t in tags),
                spec.Basic.Ack(delivery_tag=70_000, multiple=True)],
    ).payload
    assert ack_frames(3, tags, multiple_up_to=70_000) == with_multiple
    assert ack_frames(3, [], multiple_up_to=9) == ChannelFrame.marshall(
        channel_number=3, frames=[spec.Basic.Ack(delivery_tag=9, multiple=True)]
    ).payload
    assert ack_frames(3, []) == b""


def test_a_routing_key_over_255_bytes_is_refused() -> None:
    """AMQP short strings hold 255 bytes: a longer key is an error, not a corrupt frame."""
    with pytest.raises(ValueError, match="255 bytes"):
        publish_frames(1, "x", [("é" * 128, b"", "id")], content_type="a", max_body_frame=100)


async def test_publish_many_and_batched_acks_on_a_real_broker(amqp_connection: Any) -> None:
    """Published messages arrive in order with their properties and confirms; acked deliveries
    are gone for good, while an unacked one comes back when its channel closes."""
    channel = await amqp_connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        f"test.frames.{secrets.token_hex(4)}", aio_pika.ExchangeType.TOPIC, auto_delete=True
    )
    queue = await channel.declare_queue(f"test.frames.{secrets.token_hex(4)}", auto_delete=False)
    try:
        await queue.bind(exchange, routing_key="message.#")
        underlay = await channel.get_underlay_channel()
        big = secrets.token_bytes(underlay.max_content_size * 2 + 17)
        messages = [(f"message.s{i}", f'{{"n":{i}}}'.encode(), f"id-{i}") for i in range(50)]
        messages.append(("message.big", big, "id-big"))
        messages.append(("nobody.listens", b"{}", "id-dropped"))  # not mandatory: dropped
        await publish_many(underlay, exchange.name, messages)

        consumer = await amqp_connection.channel()
        await consumer.set_qos(prefetch_count=100)
        inbox = await consumer.get_queue(queue.name)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        async with asyncio.timeout(10):
            while len(got) < 51:
                message = await inbox.get(fail=False, no_ack=False)
                if message is None:
                    await asyncio.sleep(0.02)
                    continue
                got.append(message)
        assert [m.message_id for m in got] == [f"id-{i}" for i in range(50)] + ["id-big"]
        assert [m.routing_key for m in got[:3]] == ["message.s0", "message.s1", "message.s2"]
        assert got[7].body == b'{"n":7}' and got[-1].body == big
        assert {m.content_type for m in got} == {"application/json"}
        assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.PERSISTENT}

        ledger = AckLedger(await consumer.get_underlay_channel())
        for message in got:
            ledger.order.received(message.delivery_tag or 0)
        await ledger.ack([m.delivery_tag or 0 for m in got[:-1]])
        await consumer.close()  # the one not acked goes back to the queue
        left = None
        async with asyncio.timeout(10):
            while left is None:
                left = await queue.get(no_ack=True, fail=False)
                await asyncio.sleep(0.02)
        assert left.message_id == "id-big"
        await asyncio.sleep(0.2)
        assert await queue.get(no_ack=True, fail=False) is None  # the acked 50 are gone
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()
