"""gateway/amqp_reader.py: every frame decodes to what pamqp makes of it, and the reader reads
frames off a real stream (and a real broker: the whole suite runs through it)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import aiormq.connection
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from gateway.amqp_reader import FrameReader, decode_frame

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


async def test_the_reader_gives_what_aiormq_reader_gives_for_a_stream_of_frames() -> None:
    stream = b"".join([
        frame.marshal(_deliver("ctag", 7, True, "", "jobs.promotional"), 3),
        frame.marshal(ContentHeader(0, 5, commands.Basic.Properties(
            content_type="application/json", delivery_mode=2, message_id="m-1")), 3),
        frame.marshal(ContentBody(b"hello"), 3),
        frame.marshal(Heartbeat(), 0),
        frame.marshal(commands.Basic.Ack(9, True), 1),
    ])
    ours = await _read_all(stream)
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    theirs = [await aiormq.connection.FrameReceiver(reader).get_frame() for _ in range(5)]
    assert [(w, c) for w, c, _ in ours] == [(w, c) for w, c, _ in theirs]
    for (_, _, a), (_, _, b) in zip(ours, theirs):
        if isinstance(b, Heartbeat):
            assert isinstance(a, Heartbeat)
        else:
            _same(a, b)


async def test_a_frame_without_its_end_octet_is_invalid() -> None:
    wire = frame.marshal(ContentBody(b"hello"), 1)
    with pytest.raises(InvalidFrameError, match="frame-end"):
        await _read_all(wire[:-1] + b"\x00")


async def test_a_stream_cut_mid_frame_is_a_connection_error() -> None:
    wire = frame.marshal(ContentBody(b"hello"), 1)
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await _read_all(wire[:-3])
