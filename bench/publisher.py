"""Publish jobs with publisher confirms, pipelined: up to ``window`` publishes awaiting their
confirm at once, never one at a time. Two ways: as fast as the broker takes them (``burst``), or
at a fixed offered rate (``paced``). ``data.t0`` is stamped (``time.time()``) just before each
publish, so latency is measured from the moment the job is handed to the broker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import aio_pika
import orjson


@dataclass
class PublishResult:
    count: int = 0
    confirmed: int = 0
    first: float = 0.0  # time.time() of the first publish
    last_confirm: float = 0.0
    nacked: int = 0
    errors: list[str] = field(default_factory=list)
    behind_max: int = 0  # paced: most jobs the publisher ever lagged behind the schedule

    @property
    def seconds(self) -> float:
        return max(self.last_confirm - self.first, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.count,
            "seconds": round(self.seconds, 3),
            "rate": round(self.count / self.seconds, 1),
            "nacked": self.nacked,
            "errors": self.errors[:5],
            **({"behind_max": self.behind_max} if self.behind_max else {}),
        }


class Publisher:
    def __init__(self, url: str, *, exchange: str, window: int = 2000) -> None:
        self._url = url
        self._exchange_name = exchange
        self._window = window
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> "Publisher":
        self._connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": "bench-publisher"}
        )
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.get_exchange(self._exchange_name, ensure=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _publish_all(
        self, items: Iterable[tuple[str, dict[str, Any] | bytes]], result: PublishResult,
        pace: "Pacer | None" = None,
    ) -> None:
        assert self._exchange is not None
        exchange = self._exchange
        slots = asyncio.Semaphore(self._window)
        pending: set[asyncio.Task[None]] = set()

        async def one(body: bytes, routing_key: str) -> None:
            try:
                await exchange.publish(
                    aio_pika.Message(body, content_type="application/json",
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=routing_key,
                )
                result.confirmed += 1
            except Exception as exc:  # a nack (DeliveryError) or a closed channel
                result.nacked += 1
                if len(result.errors) < 5:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                slots.release()

        for routing_key, job in items:
            if pace is not None:
                await pace.wait_turn(result)
            await slots.acquire()
            now = time.time()
            if isinstance(job, dict):
                job["data"]["t0"] = f"{now:.6f}"
                body = orjson.dumps(job)
            else:
                body = job
            if result.count == 0:
                result.first = now
            result.count += 1
            task = asyncio.create_task(one(body, routing_key))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        result.last_confirm = time.time()

    async def burst(self, items: Sequence[tuple[str, dict[str, Any] | bytes]],
                    result: PublishResult | None = None) -> PublishResult:
        """Publish everything as fast as the broker confirms (``result`` fills as it goes)."""
        result = result or PublishResult()
        await self._publish_all(items, result)
        return result

    async def paced(
        self, items: Sequence[tuple[str, dict[str, Any] | bytes]], rate: float,
        result: PublishResult | None = None,
    ) -> PublishResult:
        """Publish at ``rate`` jobs a second until ``items`` run out (``result`` fills)."""
        result = result or PublishResult()
        await self._publish_all(items, result, pace=Pacer(rate))
        return result


class Pacer:
    """Lets the i-th job go at ``start + i / rate``; sleeps in small steps, never spins."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start: float | None = None

    async def wait_turn(self, result: PublishResult) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now
            return
        due = self.start + result.count / self.rate
        if due > now:
            await asyncio.sleep(max(due - now, 0.0005))
        else:
            behind = int((now - due) * self.rate)
            result.behind_max = max(result.behind_max, behind)
