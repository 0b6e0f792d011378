"""The ack bookkeeping of a consumer channel, against a model of the broker's own.

RabbitMQ keeps a channel's unacknowledged deliveries in delivery order; a single ack or reject
of a tag it does not hold, or a multiple ack whose tag it does not hold, closes the channel
(``PRECONDITION_FAILED - unknown delivery tag``); a multiple ack settles every delivery it holds
up to that tag. Whatever order batches finish in, the frames :class:`AckOrder` plans must never
settle a delivery the gateway has not settled, nor fail.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.amqp_acks import AckOrder


class BrokerChannel:
    """What the broker holds of one channel's deliveries, and what each frame does to it."""

    def __init__(self) -> None:
        self.unacked: set[int] = set()

    def ack(self, singles: list[int], multiple_up_to: int | None) -> None:
        for tag in singles:
            assert tag in self.unacked, f"single ack of unknown tag {tag}: channel closed"
            self.unacked.remove(tag)
        if multiple_up_to is not None:
            assert multiple_up_to in self.unacked, f"multiple ack of unknown tag {multiple_up_to}"
            self.unacked -= {tag for tag in self.unacked if tag <= multiple_up_to}

    def reject(self, tag: int) -> None:
        assert tag in self.unacked, f"reject of unknown tag {tag}"
        self.unacked.remove(tag)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_no_order_of_settlement_acks_what_is_not_settled(data: st.DataObject) -> None:
    """Deliveries arrive while batches of them are acked, some rejected, some acked twice and
    some never settled, in any order: after every step the broker holds exactly the deliveries
    the gateway has not settled, and no frame was refused."""
    count = data.draw(st.integers(1, 60), label="deliveries")
    settle_order = data.draw(st.permutations(range(1, count + 1)), label="settle order")
    kept = data.draw(st.integers(0, min(5, count)), label="never settled")
    order, broker = AckOrder(), BrokerChannel()
    received = 0
    settled: set[int] = set()
    pending = list(settle_order[kept:])
    while pending:
        # Deliveries keep arriving: at least up to the highest tag about to be settled.
        size = data.draw(st.integers(1, 8), label="batch")
        batch, pending = pending[:size], pending[size:]
        arrive_to = max(received, *batch)
        arrive_to = data.draw(st.integers(arrive_to, count), label="arrived")
        for tag in range(received + 1, arrive_to + 1):
            order.received(tag)
            broker.unacked.add(tag)
        received = arrive_to
        if data.draw(st.booleans(), label="reject one") and len(batch) > 1:
            rejected = batch.pop()
            broker.reject(rejected)  # the frame goes first, then the ledger hears of it
            order.settled(rejected)
            settled.add(rejected)
        again = data.draw(st.sampled_from(sorted(settled)), label="acked twice") if settled else None
        multiple_up_to, singles = order.plan(batch + ([again] if again is not None else []))
        broker.ack(singles, multiple_up_to)
        settled.update(batch)
        assert broker.unacked == set(range(1, received + 1)) - settled


def test_batches_settled_in_delivery_order_are_one_multiple_ack_each() -> None:
    """The common case: each batch's acks are one multiple ack; a batch that finishes before
    an older one is acked tag by tag, and the older one then covers only its own."""
    order = AckOrder()
    for tag in range(1, 31):
        order.received(tag)
    assert order.plan(range(1, 11)) == (10, [])
    assert order.plan([21, 23, 22]) == (None, [21, 23, 22])  # 11-20 still unsettled
    assert order.plan(range(11, 21)) == (20, [])
    assert order.plan(range(24, 31)) == (30, [])
    assert order.plan([5, 30]) == (None, [])  # acked already: nothing is written


def test_a_delivery_held_for_long_does_not_keep_the_others_in_memory() -> None:
    """One delivery never settled while 100,000 after it are: the ledger keeps a few hundred
    tags, not all of them (a slow batch must not make the consumer grow)."""
    order = AckOrder()
    order.received(1)
    for start in range(2, 100_002, 100):
        for tag in range(start, start + 100):
            order.received(tag)
        assert order.plan(range(start, start + 100)) == (None, list(range(start, start + 100)))
    assert len(order._order) < 200
    assert order.plan([1]) == (1, [])
