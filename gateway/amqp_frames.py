"""Many AMQP methods in one write: the acks and the event publishes of a batch.

aio-pika and aiormq put every ``basic.ack`` and every ``basic.publish`` through the connection's
write queue as its own frame set: one queue hand-off, one ``write()`` system call and, for an
ack, one drain wait each. With two events and one ack per job that was the largest single cost
of the hot path after email (bench/README.md). A batch's methods all go to one channel, so they
are marshalled here into one payload and handed to aiormq's writer once.

This uses aiormq's channel internals (``write_queue``, ``lock``, ``delivery_tag``,
``confirmations``), the same ones its own ``basic_publish`` uses; the tested versions are pinned
in ``pyproject.toml``. Publisher confirms keep their meaning: each publish gets its own delivery
tag and confirmation future, and the broker's (possibly ``multiple``) acks resolve them.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from aiormq.abc import AbstractChannel, ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["ack_many", "publish_many"]


async def ack_many(channel: AbstractChannel, delivery_tags: Sequence[int]) -> None:
    """Ack each of ``delivery_tags`` on ``channel`` with one write.

    One ``basic.ack`` per tag, not one ``multiple`` ack: batches finish out of order, so a
    ``multiple`` ack could settle a delivery another batch has not recorded yet.
    Raises ``ChannelInvalidStateError`` when the channel is closed (the broker then redelivers).
    """
    if not delivery_tags:
        return
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    frames = [spec.Basic.Ack(delivery_tag=tag) for tag in delivery_tags]
    drained = channel.create_future()
    await channel.write_queue.put(  # type: ignore[attr-defined]
        ChannelFrame.marshall(frames=frames, channel_number=channel.number, drain_future=drained)
    )
    await drained


async def publish_many(
    channel: AbstractChannel,
    exchange: str,
    messages: Sequence[tuple[str, bytes, spec.Basic.Properties]],
) -> None:
    """Publish ``(routing_key, body, properties)`` messages to ``exchange`` with one write.

    Not mandatory (an unroutable message is dropped by the broker). With publisher confirms on
    the channel, returns once the broker has confirmed every message; raises ``DeliveryError``
    if it refused one, ``ChannelInvalidStateError`` if the channel closed first.
    """
    if not messages:
        return
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    confirms = channel.publisher_confirms  # type: ignore[attr-defined]
    max_size = channel.max_content_size  # type: ignore[attr-defined]
    frames: list[object] = []
    for routing_key, body, properties in messages:
        frames.append(spec.Basic.Publish(exchange=exchange, routing_key=routing_key))
        frames.append(ContentHeader(properties=properties, body_size=len(body)))
        if len(body) < max_size:
            frames.append(ContentBody(body))
        else:
            frames.extend(
                ContentBody(body[i : i + max_size]) for i in range(0, len(body), max_size)
            )
    confirmations: list[asyncio.Future[object]] = []
    # The lock keeps delivery tags in the order the broker sees the publishes, as aiormq's own
    # basic_publish does.
    async with channel.lock:  # type: ignore[attr-defined]
        first = channel.delivery_tag + 1  # type: ignore[attr-defined]
        if confirms:
            for tag in range(first, first + len(messages)):
                future = channel.create_future()
                channel.confirmations[tag] = future  # type: ignore[attr-defined]
                confirmations.append(future)
        drained = channel.create_future()
        try:
            await channel.write_queue.put(  # type: ignore[attr-defined]
                ChannelFrame.marshall(
                    frames=frames,  # type: ignore[arg-type]
                    channel_number=channel.number,
                    drain_future=drained,
                )
            )
        except BaseException:
            for tag in range(first, first + len(messages)):
                channel.confirmations.pop(tag, None)  # type: ignore[attr-defined]
            for future in confirmations:
                future.cancel()
            raise
        channel.delivery_tag = first + len(messages) - 1  # type: ignore[attr-defined]
        await drained
    if confirmations:
        await asyncio.gather(*confirmations)
