"""Job deliveries straight off aiormq's channel, restored whenever aio-pika reopens it.

aio-pika's consumer wraps every delivery in an ``IncomingMessage`` and runs the callback in a
second task; on the hot path that was a fifth of the worker's CPU in the AMQP receive path.
:class:`JobConsumer` registers ``basic.consume`` on the aiormq channel under aio-pika's robust
channel instead, and :class:`AmqpDelivery` keeps aiormq's message and nothing else. Its callback
is an :class:`~gateway.amqp_reader.InlineConsumer`: the channel calls it with each whole
delivery, with no task per message (the callback only buffers). The robust channel still
reconnects, and restores its qos and the queue declaration; the consumer then registers itself
again from the channel's ``reopen_callbacks``.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

import aio_pika
import aio_pika.exceptions
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError

from gateway.amqp_acks import AckLedger
from gateway.amqp_reader import InlineConsumer
from gateway.broker import OnDelivery

__all__ = ["AmqpDelivery", "JobConsumer"]

log = structlog.get_logger("gateway.amqp")


class AmqpDelivery:
    """aiormq's delivery of a job, seen through the :class:`gateway.broker.Delivery` protocol.

    Built once per job on the hot path, so it keeps aiormq's message and its channel's
    :class:`~gateway.amqp_acks.AckLedger` and nothing else: body, routing key and headers are read
    from the message when asked for. Settling twice with :meth:`ack`, :meth:`reject` or
    :meth:`take` raises ``MessageProcessError`` (as aio-pika's ``IncomingMessage`` did); a second
    ack would make the broker close the channel.
    """

    __slots__ = ("_message", "_ledger", "_settled")

    def __init__(self, message: DeliveredMessage, ledger: AckLedger) -> None:
        self._message = message
        self._ledger = ledger
        self._settled = False
        ledger.order.received(message.delivery_tag or 0)

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def routing_key(self) -> str:
        return self._message.routing_key or ""

    @property
    def headers(self) -> dict[str, Any]:
        """A copy of the message's headers (empty when it has none)."""
        return dict(self._message.header.properties.headers or {})

    async def ack(self) -> None:
        self._check_unsettled()
        await self._ledger.ack((self._message.delivery_tag or 0,))
        self._settled = True

    def take(self) -> tuple[AckLedger, int]:
        """Settle this message by acking it with others: its channel's ledger and delivery tag,
        for :meth:`AckLedger.ack` (one write for a whole batch).

        Raises ``ChannelInvalidStateError`` when its channel has closed (it will be redelivered).
        """
        self._check_unsettled()
        channel = self._message.channel
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} closed")
        self._settled = True
        return self._ledger, self._message.delivery_tag or 0

    async def reject(self, *, requeue: bool) -> None:
        self._check_unsettled()
        tag = self._message.delivery_tag or 0
        await self._message.channel.basic_reject(tag, requeue=requeue)
        self._settled = True
        # Only now, with the reject on its way: no multiple ack may cover it before.
        self._ledger.order.settled(tag)

    def _check_unsettled(self) -> None:
        if self._settled:
            raise aio_pika.exceptions.MessageProcessError("Message already processed", self)


class JobConsumer:
    """One job queue's consumer, registered on the aiormq channel under a robust channel.

    aio-pika's robust channel reopens after a reconnection (or after the broker closed the
    channel) and restores its qos and the queue declaration on the new aiormq channel; its
    ``reopen_callbacks`` run right after that, and from there this consumer registers itself
    again with ``basic.consume``. Build it, then :meth:`start`; :meth:`stop` cancels it.
    """

    # Waits before trying again after a registration failed: 0.5 s doubling to 30 s, so a queue
    # the broker keeps refusing (another connection's exclusive consumer) is no hot loop.
    _RETRY_FIRST = 0.5
    _RETRY_MAX = 30.0

    def __init__(
        self, channel: aio_pika.RobustChannel, queue: str, on_delivery: OnDelivery
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._on_delivery = on_delivery
        # The aiormq channel of the latest registration, and its tag while the broker has it.
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._lock = asyncio.Lock()  # one basic.consume at a time
        self._stopped = asyncio.Event()
        self._failures = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Consume from the queue now, and again each time the channel reopens.

        Raises what ``basic.consume`` raises: the broker refused it, or the channel closed.
        """
        # Hooked first: a reopen while the first basic.consume is on its way must not be missed.
        self._channel.reopen_callbacks.add(self._on_reopen)
        async with self._lock:
            try:
                await self._consume_on(await self._channel.get_underlay_channel())
            except BaseException:
                self.detach()
                raise

    async def stop(self) -> None:
        """Cancel the consumer where it is registered; deliveries received stay settleable.

        A closed channel has no consumer left to cancel: that is logged as a warning.
        """
        self.detach()
        underlay, tag = self._underlay, self._tag
        if underlay is None or tag is None:
            return
        try:
            await underlay.basic_cancel(tag)
        except Exception as exc:
            log.warning("amqp.cancel_failed", queue=self._queue, error=str(exc) or repr(exc))

    def detach(self) -> None:
        """Never register again (for :meth:`stop`, or when the connection is being closed)."""
        self._stopped.set()
        self._channel.reopen_callbacks.discard(self._on_reopen)

    def _on_message(self, ledger: AckLedger, message: DeliveredMessage) -> None:
        self._on_delivery(self._queue, AmqpDelivery(message, ledger))

    def _on_reopen(self, _channel: AbstractRobustChannel | None, /) -> None:
        # Not awaited here: the channel counts itself restored before its reopen callbacks run,
        # so a close while one of them waited for the broker would never be restored. From a
        # task of our own, any close starts a fresh restore, and brings us back here.
        self._spawn()

    def _on_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        # The broker cancelled us (the queue was deleted, say). Registering again on the same
        # channel either works or fails with a channel error; after which the channel reopens,
        # declares the queue again, and calls _on_reopen.
        if frame.consumer_tag == self._tag and not self._stopped.is_set():
            log.warning("amqp.consumer_cancelled", queue=self._queue)
            self._tag = None
            self._spawn()

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(
            self._register_again(), name=f"amqp-consume:{self._queue}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register_again(self) -> None:
        async with self._lock:
            if self._failures and not await self._wait_before_retry():
                return
            if self._stopped.is_set():
                return
            # Not the robust channel's own getter: it waits for a connection that may be gone
            # for good. A channel that is not open now calls _on_reopen once it is.
            try:
                underlay = await aio_pika.Channel.get_underlay_channel(self._channel)
            except ChannelInvalidStateError:
                return
            if underlay.is_closed or (underlay is self._underlay and self._tag is not None):
                return  # closed: its reopen calls us again; or registered there already
            try:
                await self._consume_on(underlay)
            except Exception as exc:  # whatever it was, this task is the one to try again
                self._failures += 1
                log.warning("amqp.consume_failed", queue=self._queue, error=str(exc) or repr(exc))
                if not underlay.is_closed:
                    self._spawn()  # no reopen is coming: try again on this channel
                return
            self._failures = 0
            if not self._stopped.is_set():
                log.info("amqp.consumer_restored", queue=self._queue)

    async def _wait_before_retry(self) -> bool:
        """Sleep before another try; False if stopped meanwhile."""
        delay = min(self._RETRY_MAX, self._RETRY_FIRST * 2 ** (self._failures - 1))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)
        return not self._stopped.is_set()

    async def _consume_on(self, underlay: aiormq.abc.AbstractChannel) -> None:
        # Delivery tags count from 1 on each channel: each registration has its own ledger.
        on_message = partial(self._on_message, AckLedger(underlay))
        ok = await underlay.basic_consume(
            queue=self._queue, consumer_callback=InlineConsumer(on_message), no_ack=False
        )
        if ok.consumer_tag is None:  # pamqp types it optional; the broker always sends it
            raise RuntimeError(f"basic.consume on {self._queue} returned no consumer tag")
        self._underlay, self._tag = underlay, ok.consumer_tag
        underlay.on_consumer_cancel_callbacks.add(self._on_cancelled)
        if self._stopped.is_set():  # stop() came while basic.consume was on its way
            await underlay.basic_cancel(ok.consumer_tag)
