"""Publish jobs with publisher confirms, pipelined and in chunks: each chunk of up to ``chunk``
jobs goes to the broker in one write (``gateway.amqp_frames.publish_many``, the frames the
gateway's own event publishes use), and up to ``window`` jobs await their confirm at once. Two
ways: as fast as the broker takes them (``burst``), or at a fixed offered rate (``paced``: each
turn publishes the jobs that are due, turns at least ``tick`` apart: 2 ms in ``bench.cli``, so
about three jobs a turn at 1,400 jobs/s).
``data.t0`` is stamped (``time.time()``) as each job is serialised, just before its chunk's
write, so latency is measured from the moment the job is handed to the broker.

The publisher stands in for upstream services, which do not share the gateway's machine in
production: it should take as little of the box as it can. Through aio-pika, one publish and
one task per job, the benchmark process took 31 % of a core through a burst on a 2-vCPU machine,
and set the raw ceiling itself; this one, 10 % (bench/runs.md, "Evening runs" of 2026-12-03).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import aio_pika
import orjson

from gateway.amqp_frames import publish_many


@dataclass
class PublishResult:
    count: int = 0
    confirmed: int = 0
    first: float = 0.0  # time.time() of the first publish
    last_confirm: float = 0.0
    nacked: int = 0  # jobs in chunks the broker refused or could not confirm (a chunk counts whole)
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
    def __init__(self, url: str, *, exchange: str, window: int = 2000, chunk: int = 50) -> None:
        self._url = url
        self._exchange = exchange
        self._window = window
        self._chunk = chunk
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: Any = None

    async def __aenter__(self) -> "Publisher":
        self._connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": "bench-publisher"}
        )
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.get_exchange(self._exchange, ensure=True)  # fail early if it is missing
        self._channel = await channel.get_underlay_channel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _publish_all(
        self, items: Sequence[tuple[str, dict[str, Any] | bytes]], result: PublishResult,
        pace: "Pacer | None" = None,
    ) -> None:
        # At most ``window`` jobs await their confirm: whole chunks in a burst; when paced, a
        # turn's chunk is a job or two, so the window counts turns.
        slots = asyncio.Semaphore(self._window if pace else max(1, self._window // self._chunk))
        pending: set[asyncio.Task[None]] = set()

        async def send(messages: list[tuple[str, bytes, str]]) -> None:
            try:
                await publish_many(self._channel, self._exchange, messages)
                result.confirmed += len(messages)
            except Exception as exc:  # a nack (DeliveryError) or a closed channel
                result.nacked += len(messages)
                if len(result.errors) < 5:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                slots.release()

        index = 0
        while index < len(items):
            size = self._chunk if pace is None else await pace.due(result, self._chunk)
            await slots.acquire()
            messages = []
            for routing_key, job in items[index : index + size]:
                now = time.time()
                if isinstance(job, dict):
                    job["data"]["t0"] = f"{now:.6f}"
                    body = orjson.dumps(job)
                else:
                    body = job
                messages.append((routing_key, body, str(index + len(messages))))
            if result.count == 0:
                result.first = now
            index += len(messages)
            result.count += len(messages)
            task = asyncio.create_task(send(messages))
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
        result: PublishResult | None = None, *, tick: float = 0.0005,
    ) -> PublishResult:
        """Publish at ``rate`` jobs a second until ``items`` run out (``result`` fills); a
        turn comes at most every ``tick`` seconds and publishes the jobs due by then."""
        result = result or PublishResult()
        await self._publish_all(items, result, pace=Pacer(rate, tick=tick))
        return result


class Pacer:
    """Lets the i-th job go at ``start + i / rate``; sleeps in small steps, never spins."""

    def __init__(self, rate: float, *, tick: float = 0.0005) -> None:
        self.rate = rate
        self.tick = tick
        self.start: float | None = None

    async def due(self, result: PublishResult, most: int) -> int:
        """Wait until at least one job is due; return how many are (at most ``most``)."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
            return 1
        due_count = int((now - self.start) * self.rate) + 1 - result.count
        if due_count <= 0:
            next_due = self.start + result.count / self.rate
            await asyncio.sleep(max(next_due - now, self.tick))
            now = time.monotonic()
            due_count = max(1, int((now - self.start) * self.rate) + 1 - result.count)
        # Jobs due beyond the chunk mean the publisher is late (the machine is busy).
        result.behind_max = max(result.behind_max, due_count - 1)
        return min(due_count, most)
