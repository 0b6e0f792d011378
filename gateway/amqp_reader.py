"""A leaner frame reader for aiormq's connection: the hot frames decoded by hand.

Every job arrives as three frames (``basic.deliver``, a content header, the body) and its two
events come back as publisher confirms (``basic.ack``). aiormq reads each frame into a
``BytesIO`` under an ``asyncio.Lock`` with three ``readexactly`` calls, then has pamqp decode it
with its generic, attribute-by-attribute decoder: ~7 µs for a deliver or a header, 4 µs for an
ack, and the reader task was a sixth of the worker's CPU in the benchmark's profile.

:class:`FrameReader` reads a frame with two ``readexactly`` calls and decodes ``basic.deliver``,
``basic.ack``, content headers and bodies with ``struct``, building the same pamqp objects;
any other frame (and any header whose properties it does not decode itself) goes to pamqp as
before. :func:`install` puts it in place of aiormq's ``FrameReceiver`` for the connections
opened afterwards; the tested aiormq and pamqp versions are pinned in ``pyproject.toml``, and
the tests compare its results with pamqp's, frame by frame.

A delivery is also handed over whole. aiormq passes each of its three frames through the
connection's reader loop and the channel's frame queue, and then starts a task per message to
run the consumer. :class:`FrameReader` reads the content header and body right after the
``basic.deliver`` and yields one :class:`AssembledDeliver` carrying them; the channel's
``_on_deliver_frame``, replaced by :func:`install`, builds the message from it without reading
more frames, and calls an :class:`InlineConsumer` directly instead of starting a task. Frames of
other channels that arrive in the middle of a delivery are kept, and yielded after it.

Publisher confirms are read in runs: a ``basic.ack`` is yielded together with the ``basic.ack``
frames of the same channel already waiting in the read buffer after it, as one
:class:`~gateway.amqp_confirms.AckRun`, which the confirm router that :func:`install` also puts
in place settles frame by frame.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from typing import Any, Callable

import aiormq.channel
import aiormq.connection
import pamqp.frame
import structlog
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands, decode
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from gateway import amqp_confirms
from gateway.amqp_confirms import AckRun

__all__ = ["AssembledDeliver", "FrameReader", "InlineConsumer", "decode_frame", "install"]

log = structlog.get_logger("gateway.amqp")

_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_DELIVERY_TAG = struct.Struct(">q")  # signed, as pamqp reads a longlong
_HEADER_START = struct.Struct(">HHQH")
_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC = 60
_DELIVER, _ACK = 60, 80
_DELIVER_ID = _METHOD_ID.pack(_BASIC, _DELIVER)
_ACK_ID = _METHOD_ID.pack(_BASIC, _ACK)
_ACK_FRAME_SIZE = 21  # head 7, class and method 4, delivery tag 8, bits 1, frame end 1

# Basic properties in flag order (AMQP 0-9-1 §4.2.6.1, highest bit first) with their decoders.
# Only these four kinds of value occur; a flag outside the table (reserved bits, a continued
# flag word) sends the frame to pamqp.
_SHORTSTR, _OCTET, _TABLE, _TIMESTAMP = range(4)
_PROPERTIES = (
    (0x8000, "content_type", _SHORTSTR),
    (0x4000, "content_encoding", _SHORTSTR),
    (0x2000, "headers", _TABLE),
    (0x1000, "delivery_mode", _OCTET),
    (0x0800, "priority", _OCTET),
    (0x0400, "correlation_id", _SHORTSTR),
    (0x0200, "reply_to", _SHORTSTR),
    (0x0100, "expiration", _SHORTSTR),
    (0x0080, "message_id", _SHORTSTR),
    (0x0040, "timestamp", _TIMESTAMP),
    (0x0020, "message_type", _SHORTSTR),
    (0x0010, "user_id", _SHORTSTR),
    (0x0008, "app_id", _SHORTSTR),
    (0x0004, "cluster_id", _SHORTSTR),
)
_KNOWN_FLAGS = sum(flag for flag, _, _ in _PROPERTIES)


def decode_frame(
    frame_type: int, payload: bytes, deliver: type[commands.Basic.Deliver] = commands.Basic.Deliver
) -> Any:
    """The pamqp object for one frame's payload (frame-end byte removed), as pamqp makes it; a
    ``basic.deliver`` is made as ``deliver`` (a subclass, for :class:`AssembledDeliver`)."""
    if not payload:
        pass  # a heartbeat, or (any other type) a frame pamqp refuses: "No frame size"
    elif frame_type == _BODY:
        return ContentBody(payload)
    elif frame_type == _METHOD:
        class_id, method_id = _METHOD_ID.unpack_from(payload)
        if class_id == _BASIC:
            if method_id == _DELIVER:
                return _deliver(payload, deliver)
            if method_id == _ACK and len(payload) == 13:
                return commands.Basic.Ack(_DELIVERY_TAG.unpack_from(payload, 4)[0],
                                          bool(payload[12] & 1))
    elif frame_type == _HEADER:
        found = _content_header(payload)
        if found is not None:
            return found
    head = _HEAD.pack(frame_type, 0, len(payload))
    return pamqp.frame.unmarshal(head + payload + b"\xce")[2]


def _deliver(payload: bytes, cls: type[commands.Basic.Deliver]) -> Any:
    # consumer-tag (shortstr), delivery-tag (longlong), redelivered (bit), exchange, routing-key.
    size = payload[4]
    consumer_tag = payload[5:5 + size].decode()
    at = 5 + size
    delivery_tag = _DELIVERY_TAG.unpack_from(payload, at)[0]
    redelivered = bool(payload[at + 8] & 1)
    at += 9
    size = payload[at]
    exchange = payload[at + 1:at + 1 + size].decode()
    at += 1 + size
    size = payload[at]
    routing_key = payload[at + 1:at + 1 + size].decode()
    if at + 1 + size != len(payload):
        raise InvalidFrameError("basic.deliver frame of the wrong length")
    # Made as pamqp's decoder makes it: attributes set, no validation (a name the broker sent
    # is the broker's business).
    deliver = _DELIVER_NEW(cls)
    deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered = (
        consumer_tag, delivery_tag, redelivered)
    deliver.exchange, deliver.routing_key = exchange, routing_key
    return deliver


_DELIVER_NEW = object.__new__


def _content_header(payload: bytes) -> ContentHeader | None:
    class_id, weight, body_size, flags = _HEADER_START.unpack_from(payload)
    if class_id != _BASIC or flags & ~_KNOWN_FLAGS:
        return None
    properties = commands.Basic.Properties()  # attributes set below, unvalidated as pamqp does
    at = 14
    for flag, name, kind in _PROPERTIES:
        if not flags & flag:
            continue
        if kind == _SHORTSTR:
            size = payload[at]
            value: Any = payload[at + 1:at + 1 + size].decode()
            at += 1 + size
        elif kind == _OCTET:
            value = payload[at]
            at += 1
        elif kind == _TABLE:
            used, value = decode.field_table(payload[at:])
            at += used
        else:
            used, value = decode.timestamp(payload[at:])
            at += used
        setattr(properties, name, value)
    if at != len(payload):
        raise InvalidFrameError("content header frame of the wrong length")
    found = ContentHeader(weight, body_size, properties)
    found.class_id = class_id
    return found


class AssembledDeliver(commands.Basic.Deliver):
    """A ``basic.deliver`` with its content header and body, read by :class:`FrameReader`."""

    __slots__ = ("header", "body")

    header: ContentHeader
    body: bytes


class InlineConsumer:
    """A consumer callback that the channel calls directly, once per message, with no task.

    Pass it as ``basic_consume``'s ``consumer_callback``. ``callback`` must not block; what it
    raises is logged. On a channel whose connection did not read with :class:`FrameReader`,
    aiormq calls the object instead, which runs ``callback`` in the usual per-message task.
    """

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[DeliveredMessage], None]) -> None:
        self.callback = callback

    async def __call__(self, message: DeliveredMessage) -> None:
        self.callback(message)


class FrameReader(aiormq.connection.FrameReceiver):
    """aiormq's ``FrameReceiver`` with two reads per frame, the hot frames decoded here, and
    each delivery yielded whole (:class:`AssembledDeliver`)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        # Frames of other channels read in the middle of a delivery, yielded after it.
        self._held: collections.deque[tuple[int, int, Any]] = collections.deque()

    async def get_frame(self) -> tuple[int, int, Any]:
        """The next frame as ``(bytes consumed, channel, pamqp object)``, as aiormq expects."""
        if self._held:
            return self._held.popleft()
        frame_type, channel, payload = await self._read()
        if frame_type == _METHOD:
            if payload.startswith(_DELIVER_ID):
                return await self._assemble(channel, payload)
            if len(payload) == 13 and payload.startswith(_ACK_ID):
                return await self._ack_run(channel, payload)
        return len(payload) + 8, channel, self._decode(frame_type, payload)

    async def _ack_run(self, channel: int, payload: bytes) -> tuple[int, int, Any]:
        """``payload``'s ``basic.ack``, and with it the ``basic.ack`` frames of the same channel
        that are already read and wait next in the buffer: one :class:`AckRun` for them all (a
        batch's publisher confirms come back as a run of single acks, each of which would
        otherwise go through aiormq's reader loop, the channel's queue and its reader task)."""
        acks = [(_DELIVERY_TAG.unpack_from(payload, 4)[0], bool(payload[12] & 1))]
        buffer = getattr(self.reader, "_buffer", None)  # asyncio.StreamReader's, bytes read
        prefix = _HEAD.pack(_METHOD, channel, 13) + _ACK_ID
        while buffer is not None and len(buffer) >= _ACK_FRAME_SIZE and buffer.startswith(prefix):
            frame = await self.reader.readexactly(_ACK_FRAME_SIZE)  # there: returns at once
            if frame[-1] != _FRAME_END:
                raise InvalidFrameError("frame does not end with the frame-end octet")
            acks.append((_DELIVERY_TAG.unpack_from(frame, 11)[0], bool(frame[19] & 1)))
        if len(acks) == 1:
            return len(payload) + 8, channel, self._decode(_METHOD, payload)
        return _ACK_FRAME_SIZE * len(acks), channel, AckRun.of(acks)

    async def _assemble(self, channel: int, payload: bytes) -> tuple[int, int, Any]:
        """The delivery that ``payload`` starts, with the header and body that follow it."""
        weight = len(payload) + 8
        deliver = self._decode(_METHOD, payload, AssembledDeliver)  # payload starts a deliver
        header: ContentHeader | None = None
        parts: list[bytes] = []
        received = 0
        while header is None or received < header.body_size:
            try:
                frame_type, number, content = await self._read()
            except StopAsyncIteration:
                raise AMQPConnectionError(
                    "Server connection closed inside a delivery") from None
            if number != channel:
                self._held.append((len(content) + 8, number, self._decode(frame_type, content)))
                continue
            weight += len(content) + 8
            if header is None:
                found = self._decode(frame_type, content)
                if not isinstance(found, ContentHeader):
                    raise InvalidFrameError(f"{found!r} where a content header was due")
                header = found
            elif frame_type == _BODY:
                parts.append(content)
                received += len(content)
            else:
                raise InvalidFrameError(f"frame type {frame_type} where a content body was due")
        deliver.header = header
        deliver.body = parts[0] if len(parts) == 1 else b"".join(parts)
        return weight, channel, deliver

    async def _read(self) -> tuple[int, int, bytes]:
        """One frame: its type, channel and payload (the frame-end octet checked and removed)."""
        reader = self.reader
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        # One task reads a connection, so aiormq's lock around the reads is not needed.
        try:
            head = await reader.readexactly(7)
            if not self.started and head.startswith(b"AMQP"):
                raise ProtocolSyntaxError("Unexpected AMQP protocol header")
            self.started = True
            frame_type, channel, size = _HEAD.unpack(head)
            rest = await reader.readexactly(size + 1)
        except asyncio.IncompleteReadError as exc:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(exc.partial)} bytes but {exc.expected} bytes expected",
            ) from exc
        except OSError as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        if rest[-1] != _FRAME_END:
            raise InvalidFrameError("frame does not end with the frame-end octet")
        return frame_type, channel, rest[:-1]

    @staticmethod
    def _decode(
        frame_type: int, payload: bytes,
        deliver: type[commands.Basic.Deliver] = commands.Basic.Deliver,
    ) -> Any:
        try:
            return decode_frame(frame_type, payload, deliver)
        except (PAMQPException, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise InvalidFrameError(str(exc)) from exc


_aiormq_on_deliver_frame = aiormq.channel.Channel._on_deliver_frame


async def _on_deliver_frame(self: aiormq.channel.Channel, frame: commands.Basic.Deliver) -> None:
    """aiormq's, for a delivery already read whole; an :class:`InlineConsumer` is called here."""
    if not isinstance(frame, AssembledDeliver):
        return await _aiormq_on_deliver_frame(self, frame)
    message = DeliveredMessage(delivery=frame, header=frame.header, body=frame.body, channel=self)
    consumer = self.consumers.get(frame.consumer_tag)  # type: ignore[arg-type]
    if consumer is None:
        return None
    # basic_consume keeps the callback wrapped (aiormq.tools.awaitable, functools.wraps).
    inline = getattr(consumer, "__wrapped__", consumer)
    if isinstance(inline, InlineConsumer):
        try:
            inline.callback(message)
        except Exception:  # as aiormq logs a failed consumer task: the channel reads on
            log.exception("amqp.consumer_failed", consumer_tag=frame.consumer_tag)
        return None
    task = self.create_task(consumer(message))
    task.add_done_callback(self._on_consumer_done)
    return None


def install() -> None:
    """Make aiormq's connections opened from now on read frames with :class:`FrameReader`, its
    channels take deliveries whole and settle runs of confirms (all idempotent)."""
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]
    aiormq.channel.Channel._on_deliver_frame = _on_deliver_frame  # type: ignore[method-assign]
    amqp_confirms.install()  # the reader yields AckRun, which only its router knows
