"""The in-process broker of dev mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from structlog.testing import capture_logs

from gateway.broker import Broker, Delivery
from gateway.memqueue import EVENTS_KEPT, MemoryBroker

TX = "gateway.send.transactional"
PROMO = "gateway.send.promotional"


class Received:
    """Collects what the broker hands to ``on_delivery``."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[tuple[str, Delivery]] = asyncio.Queue()

    def __call__(self, queue_name: str, delivery: Delivery) -> None:
        self.items.put_nowait((queue_name, delivery))

    async def next(self) -> tuple[str, Delivery]:
        return await asyncio.wait_for(self.items.get(), timeout=2)

    async def count_after_quiet(self) -> int:
        """How many arrived once the consumers have had time to hand out everything they can."""
        await asyncio.sleep(0.05)
        return self.items.qsize()


@pytest.fixture
async def make_broker() -> AsyncIterator[Callable[..., MemoryBroker]]:
    """Brokers built by the test, closed after it."""
    brokers: list[MemoryBroker] = []

    def make(**kwargs: int) -> MemoryBroker:
        broker = MemoryBroker(**kwargs)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


async def test_jobs_are_routed_by_key(make_broker: Callable[..., MemoryBroker]) -> None:
    """A job reaches the queue bound to its routing key, body and key intact."""
    broker = make_broker()
    received = Received()
    await broker.consume(received)
    await broker.publish_job(b"t", routing_key="send.transactional", message_id="1")
    await broker.publish_job(b"p", routing_key="send.promotional", message_id="2")
    got = {(q, d.body, d.routing_key) for q, d in [await received.next(), await received.next()]}
    assert got == {(TX, b"t", "send.transactional"), (PROMO, b"p", "send.promotional")}


async def test_unbound_routing_key_is_dropped_with_a_warning(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """A job whose key no queue is bound to is dropped and a warning is logged."""
    broker = make_broker()
    with capture_logs() as logs:
        await broker.publish_job(b"x", routing_key="send.bulk", message_id="m")
    assert broker.depth(TX) == broker.depth(PROMO) == 0
    assert [(e["event"], e["log_level"], e["routing_key"]) for e in logs] == [
        ("memqueue.unroutable", "warning", "send.bulk")
    ]


async def test_prefetch_bounds_unsettled_deliveries_per_queue(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """At most ``prefetch`` deliveries per queue are unsettled; settling one lets the next in."""
    broker = make_broker(prefetch=2)
    received = Received()
    for n in range(5):
        await broker.publish_job(str(n).encode(), routing_key="send.transactional", message_id=None)
    await broker.publish_job(b"p", routing_key="send.promotional", message_id=None)
    await broker.consume(received)
    # Two transactional plus the promotional one: each queue has its own limit.
    assert await received.count_after_quiet() == 3
    assert broker.depth(TX) == 3
    first = [await received.next() for _ in range(3)]
    tx = [d for q, d in first if q == TX]
    await tx[0].ack()
    await tx[1].reject(requeue=False)
    assert await received.count_after_quiet() == 2
    assert broker.depth(TX) == 1


async def test_requeue_puts_the_job_at_the_back(make_broker: Callable[..., MemoryBroker]) -> None:
    """A job rejected with requeue comes back after the jobs already waiting."""
    broker = make_broker(prefetch=1)
    received = Received()
    for body in (b"a", b"b"):
        await broker.publish_job(body, routing_key="send.transactional", message_id=None)
    await broker.consume(received)
    _, a = await received.next()
    assert a.body == b"a"
    await a.reject(requeue=True)
    _, b = await received.next()
    assert b.body == b"b"
    await b.ack()
    _, again = await received.next()
    assert (again.body, again.routing_key) == (b"a", "send.transactional")
    await again.ack()
    assert await received.count_after_quiet() == 0


async def test_reject_without_requeue_drops_the_job(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """A job rejected without requeue is never delivered again."""
    broker = make_broker()
    received = Received()
    await broker.consume(received)
    await broker.publish_job(b"a", routing_key="send.promotional", message_id=None)
    _, delivery = await received.next()
    await delivery.reject(requeue=False)
    assert await received.count_after_quiet() == 0
    assert broker.depth(PROMO) == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [("ack", "ack"), ("ack", "reject"), ("reject", "ack"), ("requeue", "reject")],
)
async def test_settling_twice_raises(
    make_broker: Callable[..., MemoryBroker], first: str, second: str
) -> None:
    """A delivery settled once cannot be settled again, whichever way."""
    broker = make_broker(prefetch=1)
    received = Received()
    await broker.consume(received)
    await broker.publish_job(b"a", routing_key="send.transactional", message_id=None)
    _, delivery = await received.next()

    async def settle(how: str) -> None:
        if how == "ack":
            await delivery.ack()
        else:
            await delivery.reject(requeue=how == "requeue")

    await settle(first)
    with pytest.raises(RuntimeError, match="already settled"):
        await settle(second)


async def test_stop_consuming_keeps_deliveries_settleable(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """After stop_consuming nothing more is delivered, and handed-out deliveries still settle."""
    broker = make_broker(prefetch=1)
    received = Received()
    await broker.consume(received)
    await broker.publish_job(b"a", routing_key="send.transactional", message_id=None)
    _, delivery = await received.next()
    await broker.stop_consuming()
    await broker.publish_job(b"b", routing_key="send.transactional", message_id=None)
    await delivery.reject(requeue=True)
    assert await received.count_after_quiet() == 0
    assert broker.depth(TX) == 2
    await broker.consume(received)
    assert [(await received.next())[1].body] == [b"b"]


async def test_dead_letters_are_kept_and_logged(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """dead_letter keeps (reason, body) and logs job.dead_lettered with the reason."""
    broker = make_broker()
    received = Received()
    await broker.consume(received)
    await broker.publish_job(b"{not json", routing_key="send.transactional", message_id=None)
    _, delivery = await received.next()
    with capture_logs() as logs:
        await broker.dead_letter(delivery, "invalid JSON")
    assert broker.dead == [("invalid JSON", b"{not json")]
    assert [(e["event"], e["log_level"], e["reason"]) for e in logs] == [
        ("job.dead_lettered", "warning", "invalid JSON")
    ]


async def test_events_are_kept_decoded_and_bounded(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """Published events are kept decoded, oldest first, only the last 1000, with no log line."""
    broker = make_broker()
    events = [("message.sent", orjson.dumps({"n": n})) for n in range(EVENTS_KEPT + 5)]
    with capture_logs() as logs:
        await broker.publish_events(events[:2])
        await broker.publish_events(events[2:])
    assert logs == []
    assert EVENTS_KEPT == 1000
    assert len(broker.events) == 1000
    assert broker.events[0] == ("message.sent", {"n": 5})
    assert broker.events[-1] == ("message.sent", {"n": 1004})


async def test_ping_answers_and_close_stops_consumers(
    make_broker: Callable[..., MemoryBroker],
) -> None:
    """ping succeeds; after close no job is delivered any more."""
    broker = make_broker()
    received = Received()
    await broker.consume(received)
    await broker.ping()
    await broker.close()
    await broker.publish_job(b"a", routing_key="send.transactional", message_id=None)
    assert await received.count_after_quiet() == 0


def test_memory_broker_has_every_broker_method() -> None:
    """MemoryBroker offers every method of the Broker protocol (and type-checks as one)."""
    broker: Broker = MemoryBroker()
    wanted = {name for name in vars(Broker) if not name.startswith("_")}
    assert wanted == {
        "consume",
        "stop_consuming",
        "publish_job",
        "ack_all",
        "publish_events",
        "dead_letter",
        "ping",
        "close",
    }
    assert all(callable(getattr(broker, name)) for name in wanted)
