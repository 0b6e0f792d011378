"""The acks of one consumer channel: a ``multiple`` ack for what is settled in order.

A ``basic.ack`` with ``multiple`` set settles every unacknowledged delivery of the channel up to
its tag, and RabbitMQ handles it as one message to the queue process where single acks cost one
each: draining filled job queues with acks in twenties (``python -m bench.amqp_micro``), RabbitMQ
spent 78-86 µs of CPU per delivery with one multiple ack a batch against 116-124 µs with single
ones (bench/runs.md).

Batches finish out of order, so a multiple ack must never reach past a delivery that another
batch has not recorded yet, nor past one being rejected. :class:`AckLedger` knows which
deliveries of its channel are still unsettled: a batch's tags below the lowest unsettled one go
as one multiple ack, the others as single acks in the same write. Every other settlement of a
tag below that point has already been handed to aiormq's writer, which keeps the channel's
frames in order: acks are planned and queued under the ledger's lock, and a reject is entered
only once its frame is on its way (:meth:`AckOrder.settled`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from aiormq.abc import AbstractChannel, ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError

from gateway.amqp_frames import ack_frames

__all__ = ["AckLedger", "AckOrder"]


class AckOrder:
    """Which deliveries of a channel are unsettled, in delivery order, and what acking some of
    them may write: the bookkeeping of :class:`AckLedger`, without the channel.

    :meth:`received` for each delivery as it arrives, then exactly one of :meth:`plan` (acks) or
    :meth:`settled` (a reject) for it. A tag acked twice is acked once.
    """

    __slots__ = ("_order", "_unsettled")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # received tags; settled ones leave from the front
        self._unsettled: set[int] = set()

    def received(self, tag: int) -> None:
        self._order.append(tag)
        self._unsettled.add(tag)

    def settled(self, tag: int) -> None:
        """``tag`` was rejected (or nacked), and its frame handed to the writer."""
        self._unsettled.discard(tag)

    def plan(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """Count ``tags`` as acked and return what to write: ``(multiple_up_to, singles)``.

        Every tag below the lowest still unsettled one is settled, and all of them but these
        were written before: a multiple ack up to the highest of ``tags`` below that point
        covers those of ``tags`` and nothing else the broker still holds. The others of
        ``tags`` go as single acks. Tags not unsettled (acked already) are left out.
        """
        unsettled = self._unsettled
        fresh = [tag for tag in tags if tag in unsettled]
        unsettled.difference_update(fresh)
        order = self._order
        while order and order[0] not in unsettled:
            order.popleft()
        if len(order) > 2 * len(unsettled) + 64:
            # A delivery held for long keeps everything after it here: keep only what counts.
            self._order = order = deque(tag for tag in order if tag in unsettled)
        if not order:
            return (max(fresh) if fresh else None), []
        lowest = order[0]
        covered = [tag for tag in fresh if tag < lowest]
        return (max(covered) if covered else None), [tag for tag in fresh if tag > lowest]


class AckLedger:
    """The acks of one aiormq channel's deliveries (see the module's docstring)."""

    __slots__ = ("_channel", "_lock", "order")

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel
        self._lock = asyncio.Lock()
        self.order = AckOrder()

    async def ack(self, tags: Iterable[int]) -> None:
        """Ack ``tags`` in one write: a multiple ack for those below every unsettled delivery,
        single acks for the others. Raises ``ChannelInvalidStateError`` when the channel has
        closed (its deliveries come back from the broker)."""
        channel = self._channel
        # Planned and queued under the lock: a later plan counts on these frames being ahead
        # of its own in the writer's queue (which can be full, so ``put`` may wait).
        async with self._lock:
            if channel.is_closed:
                raise ChannelInvalidStateError(f"{channel!r} closed")
            upto, singles = self.order.plan(tags)
            payload = ack_frames(channel.number, singles, multiple_up_to=upto)
            if not payload:
                return
            drained = channel.create_future()
            await channel.write_queue.put(  # type: ignore[attr-defined]
                ChannelFrame(payload=payload, should_close=False, drain_future=drained)
            )
        await drained
