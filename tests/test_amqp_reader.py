"""gateway/amqp_reader.py: every frame decodes to what pamqp makes of it, and the reader reads
frames off a real stream (and a real broker: the whole suite runs through it)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from gateway.amqp_reader import AssembledDeliver, FrameReader, decode_frame

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=300)

shortstr = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
tags = st.integers(0, 2**63 - 1)
table_values = st.one_of(
    st.booleans(), st.integers(-(2**31), 2**31 - 1), shortstr, st.none(),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=timezone.utc)),
)
tables = st.dictionaries(st.text(min_size=1, max_size=10), table_values, max_size=4)
PROPERTY_FIELDS: dict[str, Any] = {
    "content_type": shortstr, "content_encoding": shortstr, "headers": tables,
    "delivery_mode": st.integers(0, 255), "priority": st.integers(0, 255),
    "correlation_id": shortstr, "reply_to": shortstr, "expiration": shortstr,
    "message_id": shortstr,
    "timestamp": st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=timezone.utc)),
    "message_type": shortstr, "user_id": shortstr, "app_id": shortstr, "cluster_id": shortstr,
}


@st.composite
def properties(draw: st.DrawFn) -> commands.Basic.Properties:
    chosen = draw(st.sets(st.sampled_from(sorted(PROPERTY_FIELDS))))
    made = commands.Basic.Properties()
    for name in chosen:  # set as attributes: pamqp's constructor would refuse some values
        setattr(made, name, draw(PROPERTY_FIELDS[name]))
    return made


def _deliver(consumer_tag: str, tag: int, redelivered: bool, exchange: str, key: str) -> Any:
    made = object.__new__(commands.Basic.Deliver)  # any exchange name, as a broker may send
    made.consumer_tag, made.delivery_tag, made.redelivered = consumer_tag, tag, redelivered
    made.exchange, made.routing_key = exchange, key
    return made


exchange_names = st.from_regex(r"[a-zA-Z0-9_.:-]{0,40}", fullmatch=True)  # pamqp marshals these
frames = st.one_of(
    st.builds(_deliver, shortstr, tags, st.booleans(), exchange_names, shortstr),
    st.builds(lambda tag, multiple: commands.Basic.Ack(tag, multiple), tags, st.booleans()),
    st.builds(lambda tag, multiple, requeue: commands.Basic.Nack(tag, multiple, requeue),
              tags, st.booleans(), st.booleans()),
    st.builds(lambda props, size: ContentHeader(0, size, props), properties(), tags),
    st.binary(max_size=300).map(ContentBody),
    st.just(Heartbeat()),
    st.just(commands.Channel.CloseOk()),
    st.builds(lambda tag: commands.Basic.ConsumeOk(tag), shortstr),
)


def _same(ours: Any, theirs: Any) -> None:
    assert type(ours) is type(theirs)
    if isinstance(theirs, ContentHeader):
        assert (ours.class_id, ours.weight, ours.body_size) == (
            theirs.class_id, theirs.weight, theirs.body_size)
        for name in theirs.properties.__slots__:
            assert getattr(ours.properties, name, None) == getattr(theirs.properties, name, None)
    elif isinstance(theirs, ContentBody):
        assert ours.value == theirs.value
    elif not isinstance(theirs, Heartbeat):
        for name in theirs.__slots__:
            assert getattr(ours, name) == getattr(theirs, name), name


@PROPERTY
@given(frames, st.integers(0, 65535))
def test_every_frame_decodes_as_pamqp_decodes_it(value: Any, channel: int) -> None:
    """Same object, or the same refusal (pamqp refuses a body frame of no bytes)."""
    wire = frame.marshal(value, channel)
    try:
        theirs = frame.unmarshal(wire)[2]
    except PAMQPException:
        with pytest.raises(PAMQPException):
            decode_frame(wire[0], wire[7:-1])
        return
    _same(decode_frame(wire[0], wire[7:-1]), theirs)


def test_an_exchange_name_pamqp_would_not_send_is_still_read_as_pamqp_reads_it() -> None:
    """pamqp validates names when it writes, not when it reads; neither does the reader."""
    payload = (b"\x00\x3c\x00\x3c" + b"\x04ctag" + (5).to_bytes(8, "big") + b"\x00"
               + b"\x09bad name!" + b"\x03key")
    wire = b"\x01\x00\x01" + len(payload).to_bytes(4, "big") + payload + b"\xce"
    _same(decode_frame(1, payload), frame.unmarshal(wire)[2])
    assert decode_frame(1, payload).exchange == "bad name!"


def test_a_deliver_frame_of_the_wrong_length_is_invalid() -> None:
    wire = frame.marshal(commands.Basic.Deliver("c", 1, False, "", "k"), 1)
    with pytest.raises(InvalidFrameError, match="wrong length"):
        decode_frame(wire[0], wire[7:-1] + b"x")


async def _read_all(data: bytes) -> list[tuple[int, int, Any]]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames_read = []
    async for item in FrameReader(reader):
        frames_read.append(item)
    return frames_read


async def _aiormq_reads(stream: bytes, count: int) -> list[tuple[int, int, Any]]:
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    # aiormq's own: once install() has run, aiormq.connection.FrameReceiver is ours.
    receiver = FrameReader.__base__(reader)
    assert receiver.__class__.__module__ == "aiormq.connection"
    return [await receiver.get_frame() for _ in range(count)]


def _same_delivery(ours: Any, theirs: list[Any]) -> None:
    """``ours`` (one AssembledDeliver) is aiormq's deliver, header and body frames together."""
    deliver, header, *bodies = theirs
    assert isinstance(ours, AssembledDeliver)
    for name in commands.Basic.Deliver.__slots__:
        assert getattr(ours, name) == getattr(deliver, name), name
    _same(ours.header, header)
    assert ours.body == b"".join(body.value for body in bodies)


def _delivery(tag: int, body: bytes, channel: int, *, frame_size: int = 1000) -> list[bytes]:
    """The frames of one delivery of ``body``, cut in bodies of ``frame_size`` bytes."""
    wire = [
        frame.marshal(_deliver("ctag", tag, False, "gateway.jobs", "send.promotional"), channel),
        frame.marshal(ContentHeader(0, len(body), commands.Basic.Properties(
            content_type="application/json", delivery_mode=2, message_id=f"m-{tag}")), channel),
    ]
    for at in range(0, len(body), frame_size):
        wire.append(frame.marshal(ContentBody(body[at:at + frame_size]), channel))
    return wire


async def test_the_reader_gives_what_aiormq_reader_gives_for_a_stream_of_frames() -> None:
    """The same frames, except that a delivery comes whole: one item weighing its three frames."""
    stream = b"".join([
        *_delivery(7, b"hello", 3),
        frame.marshal(Heartbeat(), 0),
        frame.marshal(commands.Basic.Ack(9, True), 1),
    ])
    ours = await _read_all(stream)
    theirs = await _aiormq_reads(stream, 5)
    assert [(w, c) for w, c, _ in ours] == [
        (sum(w for w, _, _ in theirs[:3]), 3), *((w, c) for w, c, _ in theirs[3:])]
    _same_delivery(ours[0][2], [f for _, _, f in theirs[:3]])
    assert isinstance(ours[1][2], Heartbeat)
    _same(ours[2][2], theirs[4][2])


async def test_a_body_in_several_frames_and_an_empty_body_come_whole() -> None:
    big = bytes(range(256)) * 10
    stream = b"".join([*_delivery(1, big, 2, frame_size=700), *_delivery(2, b"", 2)])
    ours = await _read_all(stream)
    theirs = await _aiormq_reads(stream, 6 + 2)
    assert len(ours) == 2
    _same_delivery(ours[0][2], [f for _, _, f in theirs[:6]])
    _same_delivery(ours[1][2], [f for _, _, f in theirs[6:]])
    assert ours[0][2].body == big and ours[1][2].body == b""


async def test_frames_of_other_channels_inside_a_delivery_come_after_it() -> None:
    """Channels may interleave: what another channel sent mid-delivery is kept, in order."""
    first, header, body_a, body_b = _delivery(5, b"abcdef", 1, frame_size=3)
    ack = frame.marshal(commands.Basic.Ack(3, False), 2)
    heartbeat = frame.marshal(Heartbeat(), 0)
    ours = await _read_all(b"".join([first, ack, header, body_a, heartbeat, body_b,
                                     frame.marshal(commands.Basic.Ack(4, False), 2)]))
    assert [c for _, c, _ in ours] == [1, 2, 0, 2]
    assert isinstance(ours[0][2], AssembledDeliver) and ours[0][2].body == b"abcdef"
    assert [type(f) for _, _, f in ours[1:]] == [commands.Basic.Ack, Heartbeat, commands.Basic.Ack]
    assert [f.delivery_tag for _, _, f in ours[1:] if not isinstance(f, Heartbeat)] == [3, 4]


async def test_acks_of_a_channel_waiting_together_come_as_one_run() -> None:
    """Consecutive basic.ack frames of one channel that are read already come as one AckRun
    (each frame's tag and multiple bit, in order, weighing all of them); an ack alone, a nack
    and the acks of another channel come as before."""
    def ack(tag: int, multiple: bool, channel: int) -> bytes:
        return frame.marshal(commands.Basic.Ack(tag, multiple), channel)

    stream = b"".join([
        *_delivery(7, b"hello", 3),
        ack(1, False, 1), ack(3, False, 1), ack(2, True, 1), ack(4, False, 1),
        ack(9, False, 2), ack(10, True, 2),
        frame.marshal(commands.Basic.Nack(5, False, False), 1),
        ack(6, False, 1),
    ])
    ours = await _read_all(stream)
    assert [(w, c, type(f).__name__) for w, c, f in ours] == [
        (ours[0][0], 3, "AssembledDeliver"), (84, 1, "AckRun"), (42, 2, "AckRun"),
        (21, 1, "Nack"), (21, 1, "Ack")]
    assert ours[1][2].acks == [(1, False), (3, False), (2, True), (4, False)]
    assert ours[2][2].acks == [(9, False), (10, True)]
    assert isinstance(ours[1][2], commands.Basic.Ack)  # aiormq's channel matches it as an ack
    assert (ours[4][2].delivery_tag, ours[4][2].multiple) == (6, False)


async def test_an_ack_frame_without_its_end_octet_in_a_run_is_invalid() -> None:
    good = frame.marshal(commands.Basic.Ack(1, False), 1)
    bad = frame.marshal(commands.Basic.Ack(2, False), 1)[:-1] + b"\x00"
    with pytest.raises(InvalidFrameError):
        await _read_all(good + bad)


@pytest.mark.parametrize("intruder", [
    frame.marshal(commands.Basic.Ack(3, False), 1),  # a method where the header was due
    frame.marshal(ContentBody(b"abc"), 1),  # the body without its header
])
async def test_a_delivery_without_its_header_is_invalid(intruder: bytes) -> None:
    first, *_ = _delivery(5, b"abc", 1)
    with pytest.raises(InvalidFrameError, match="content header was due"):
        await _read_all(first + intruder)


async def test_a_stream_that_ends_inside_a_delivery_is_a_connection_error() -> None:
    first, header, body, _ = _delivery(5, b"abcd", 1, frame_size=2)
    with pytest.raises(AMQPConnectionError, match="inside a delivery"):
        await _read_all(first + header + body)


async def test_a_delivery_cut_short_by_another_method_is_invalid() -> None:
    first, header, body, _ = _delivery(5, b"abcd", 1, frame_size=2)
    with pytest.raises(InvalidFrameError, match="content body was due"):
        await _read_all(first + header + body + frame.marshal(commands.Basic.Ack(3, False), 1))


async def test_a_frame_without_its_end_octet_is_invalid() -> None:
    wire = frame.marshal(ContentBody(b"hello"), 1)
    with pytest.raises(InvalidFrameError, match="frame-end"):
        await _read_all(wire[:-1] + b"\x00")


async def test_a_stream_cut_mid_frame_is_a_connection_error() -> None:
    wire = frame.marshal(ContentBody(b"hello"), 1)
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await _read_all(wire[:-3])
