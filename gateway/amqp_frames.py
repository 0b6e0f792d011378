"""Many AMQP methods in one write: the acks and the event publishes of a batch.

aio-pika and aiormq put every ``basic.ack`` and every ``basic.publish`` through the connection's
write queue as its own frame set: one queue hand-off, one ``write()`` system call and, for an
ack, one drain wait each. With two events and one ack per job that was the largest single cost
of the hot path after email (bench/runs.md). A batch's methods all go to one channel, so they
are marshalled here into one payload and handed to aiormq's writer once.

This uses aiormq's channel internals (``write_queue``, ``lock``, ``delivery_tag``,
``create_future``), the same ones its own ``basic_publish`` uses; the tested versions are pinned
in ``pyproject.toml``. Publisher confirms keep their meaning: each publish gets its own delivery
tag, and the batch is confirmed once the broker's (possibly ``multiple``) acks have covered
every one of them (:mod:`gateway.amqp_confirms`).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Sequence

from aiormq.abc import AbstractChannel, ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError

from gateway.amqp_confirms import confirms_for

__all__ = ["ack_frames", "publish_frames", "publish_many"]

# AMQP 0-9-1 framing (spec §4.2.3): type, channel, size, payload, frame-end. Marshalled here
# with struct rather than pamqp's generic encoder, which took ~10x longer for these three
# fixed shapes (the tests compare every byte with pamqp's output).
_FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC = 60
_PUBLISH, _ACK = 40, 80
# Property flags (spec: basic class properties, highest bit first).
_CONTENT_TYPE, _DELIVERY_MODE, _MESSAGE_ID = 0x8000, 0x1000, 0x0080
_PERSISTENT = 2
_ACK_FRAME = struct.Struct(">BHIHHQB")  # method frame head, class, method, tag, multiple bit


def _shortstr(text: str) -> bytes:
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {text[:40]!r}...")
    return bytes((len(data),)) + data


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + _FRAME_END


def ack_frames(
    channel_number: int, delivery_tags: Sequence[int], *, multiple_up_to: int | None = None
) -> bytes:
    """One ``basic.ack`` frame per tag (not ``multiple``), then, with ``multiple_up_to``, one
    ``multiple`` ack of every unacknowledged delivery up to that tag; marshalled."""
    pack = _ACK_FRAME.pack
    frames = [pack(_METHOD, channel_number, 13, _BASIC, _ACK, tag, 0) for tag in delivery_tags]
    if multiple_up_to is not None:
        frames.append(pack(_METHOD, channel_number, 13, _BASIC, _ACK, multiple_up_to, 1))
    return _FRAME_END.join(frames) + _FRAME_END if frames else b""


def publish_frames(
    channel_number: int,
    exchange: str,
    messages: Sequence[tuple[str, bytes, str]],
    *,
    content_type: str,
    max_body_frame: int,
) -> bytes:
    """``basic.publish`` + content header + body frames for each ``(routing_key, body,
    message_id)``: persistent, ``content_type``, not mandatory, bodies cut at ``max_body_frame``."""
    method_head = struct.pack(">HHH", _BASIC, _PUBLISH, 0) + _shortstr(exchange)
    props_head = struct.pack(">H", _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID)
    props_type = _shortstr(content_type) + bytes((_PERSISTENT,))
    parts: list[bytes] = []
    for routing_key, body, message_id in messages:
        parts.append(_frame(_METHOD, channel_number, method_head + _shortstr(routing_key) + b"\0"))
        header = struct.pack(">HHQ", _BASIC, 0, len(body)) + props_head + props_type
        parts.append(_frame(_HEADER, channel_number, header + _shortstr(message_id)))
        for start in range(0, len(body), max_body_frame):
            parts.append(_frame(_BODY, channel_number, body[start : start + max_body_frame]))
    return b"".join(parts)


async def publish_many(
    channel: AbstractChannel,
    exchange: str,
    messages: Sequence[tuple[str, bytes, str]],
    *,
    content_type: str = "application/json",
) -> None:
    """Publish ``(routing_key, body, message_id)`` messages to ``exchange`` with one write.

    Persistent, not mandatory (an unroutable message is dropped by the broker). With publisher
    confirms on the channel, returns once the broker has confirmed every message; raises
    ``DeliveryError`` if it refused one, ``ChannelInvalidStateError`` if the channel closed
    first.
    """
    if not messages:
        return
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    payload = publish_frames(
        channel.number,
        exchange,
        messages,
        content_type=content_type,
        max_body_frame=channel.max_content_size,  # type: ignore[attr-defined]
    )
    confirmed: asyncio.Future[None] | None = None
    # The lock keeps delivery tags in the order the broker sees the publishes, as aiormq's own
    # basic_publish does.
    async with channel.lock:  # type: ignore[attr-defined]
        first = channel.delivery_tag + 1  # type: ignore[attr-defined]
        if channel.publisher_confirms:  # type: ignore[attr-defined]
            # One future for the batch, not one per publish (gateway.amqp_confirms).
            confirms = confirms_for(channel)
            confirmed = channel.create_future()
            confirms.expect(first, len(messages), confirmed)
        drained = channel.create_future()
        try:
            await channel.write_queue.put(  # type: ignore[attr-defined]
                ChannelFrame(payload=payload, should_close=False, drain_future=drained)
            )
        except BaseException:
            if confirmed is not None:
                confirms.forget(first, len(messages))
                confirmed.cancel()
            raise
        channel.delivery_tag = first + len(messages) - 1  # type: ignore[attr-defined]
        await drained
    if confirmed is not None:
        await confirmed
