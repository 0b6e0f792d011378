"""Publisher confirms of a batch of publishes, awaited as one future.

aiormq gives every publish its own confirmation future, made by the channel's future store: a
future with four done callbacks (the store's and the connection's bookkeeping), each of which
runs when the broker's ``basic.ack`` arrives, plus the waiter's; and each ``basic.ack`` frame
goes through the connection's reader loop, the channel's frame queue and its reader task. With
two or three events per job that was most of what an event cost the gateway: 88-90 µs of CPU
per event through ``publish_events`` on the benchmark's guest in a slow hour, 30 µs with one
future per batch and the frames read in runs (``python -m bench.amqp_micro``, bench/runs.md).

:class:`BatchConfirms`, one per aiormq channel, keeps which batch each outstanding delivery tag
belongs to and resolves one future per batch once the broker has confirmed all of its tags (or
fails it with ``DeliveryError`` on a ``basic.nack``). The channel's confirm frames reach it
through :func:`install` (done by :func:`confirms_for`), a router in front of aiormq's
``_on_confirm_frame``: tags
registered here are settled here, and aiormq's own confirmations on the same channel (aio-pika's
``publish``) are settled by aiormq's code as before. The batch's future comes from the channel's
future store, so a channel that closes fails it as it fails aiormq's own.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiormq.channel
from aiormq.abc import AbstractChannel
from aiormq.exceptions import DeliveryError
from pamqp import commands

__all__ = ["AckRun", "BatchConfirms", "confirms_for", "install"]


class _Batch:
    __slots__ = ("future", "left")

    def __init__(self, future: asyncio.Future[None], left: int) -> None:
        self.future = future
        self.left = left


class BatchConfirms:
    """The outstanding publishes of one channel's batches, by delivery tag."""

    # No reference to the channel: it is the key this is kept under, weakly (confirms_for).
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[int, _Batch] = {}  # tag -> its batch, in tag order

    def expect(self, first: int, count: int, future: asyncio.Future[None]) -> None:
        """Resolve ``future`` when the broker has confirmed tags ``first`` to
        ``first + count - 1``; fail it with ``DeliveryError`` if it refuses one of them. Make it
        with the channel's ``create_future``, so that a channel that closes first fails it."""
        batch = _Batch(future, count)
        self._pending.update(dict.fromkeys(range(first, first + count), batch))

    def forget(self, first: int, count: int) -> None:
        """Drop tags that never reached the broker (their write failed)."""
        for tag in range(first, first + count):
            self._pending.pop(tag, None)

    def owns(self, tag: int) -> bool:
        """Whether ``tag`` belongs to a batch still waiting for its confirm."""
        return tag in self._pending

    def confirm(self, tag: int, multiple: bool, refused: bool = False) -> None:
        """Settle what the broker's ``basic.ack`` (``basic.nack`` when ``refused``) of ``tag``
        confirms: that tag, or every tag up to it when ``multiple``."""
        pending = self._pending
        if multiple:
            tags = []
            for pending_tag in pending:  # in tag order: stop at the first one past the frame's
                if pending_tag > tag:
                    break
                tags.append(pending_tag)
        else:
            tags = [tag] if tag in pending else []
        for settled in tags:
            batch = pending.pop(settled)
            if batch.future.done():
                continue
            if refused:
                batch.future.set_exception(DeliveryError(None, _nack(tag, multiple)))
                continue
            batch.left -= 1
            if batch.left == 0:
                batch.future.set_result(None)


def _nack(tag: int, multiple: bool) -> commands.Basic.Nack:
    return commands.Basic.Nack(delivery_tag=tag, multiple=multiple)


class AckRun(commands.Basic.Ack):
    """Consecutive ``basic.ack`` frames of one channel, read together by
    :class:`gateway.amqp_reader.FrameReader` and settled in one pass through aiormq's reader
    and channel: ``acks`` holds each frame's ``(delivery_tag, multiple)``, in order. Its own
    ``delivery_tag`` is the last frame's. Only :func:`install`'s router reads ``acks``, which is
    why ``FrameReader`` is installed together with it."""

    __slots__ = ("acks",)

    acks: list[tuple[int, bool]]

    @classmethod
    def of(cls, acks: list[tuple[int, bool]]) -> AckRun:
        run = object.__new__(cls)  # as pamqp's decoder makes frames: no validation
        run.delivery_tag, run.multiple = acks[-1][0], False
        run.acks = acks
        return run


_CONFIRMS: weakref.WeakKeyDictionary[Any, BatchConfirms] = weakref.WeakKeyDictionary()


def confirms_for(channel: AbstractChannel) -> BatchConfirms:
    """The channel's :class:`BatchConfirms` (made on first use, with :func:`install` done, so
    its confirm frames cannot miss it)."""
    confirms = _CONFIRMS.get(channel)
    if confirms is None:
        install()
        confirms = _CONFIRMS[channel] = BatchConfirms()
    return confirms


_aiormq_on_confirm_frame = aiormq.channel.Channel._on_confirm_frame


async def _on_confirm_frame(
    self: aiormq.channel.Channel, frame: commands.Basic.Ack | commands.Basic.Nack
) -> None:
    """Tags of batches go to the channel's :class:`BatchConfirms`, aiormq's own to aiormq's
    code; an :class:`AckRun` is settled frame by frame, in order."""
    run = frame.acks if isinstance(frame, AckRun) else None
    acks = run or [(frame.delivery_tag, frame.multiple)]
    confirms = _CONFIRMS.get(self)
    if confirms is None:  # no batch was ever published on this channel: all of it is aiormq's
        for tag, multiple in acks:
            await _aiormq_on_confirm_frame(self, _frame(frame, run, tag, multiple))
        return None
    refused = isinstance(frame, commands.Basic.Nack)
    for tag, multiple in acks:
        confirms.confirm(tag, multiple, refused)
        if not self.confirmations:  # nothing of aiormq's own (aio-pika's publish) waits
            continue
        if multiple:
            aiormq_tags = [t for t in self.confirmations if t <= tag]
        else:
            aiormq_tags = [tag] if tag in self.confirmations else []
        if aiormq_tags:
            own = _frame(frame, run, tag, multiple)
            for pending in aiormq_tags:
                self._confirm_delivery(pending, own)
    return None


def _frame(frame: Any, run: list[tuple[int, bool]] | None, tag: int, multiple: bool) -> Any:
    """The frame aiormq's confirm handling wants: ``frame``, or one made for a run's member."""
    return frame if run is None else commands.Basic.Ack(delivery_tag=tag, multiple=multiple)


def install() -> None:
    """Route confirm frames as above, on every aiormq channel (idempotent)."""
    aiormq.channel.Channel._on_confirm_frame = _on_confirm_frame  # type: ignore[method-assign]
