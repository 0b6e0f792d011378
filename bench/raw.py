"""The raw ceiling: a bare aio-pika consumer that acks every message and does nothing else.

It mirrors the gateway's consumer layout: the same robust connection, one channel per queue with
the same prefetch, a manual ``ack`` per message, on uvloop. Run by ``bench.run`` as its own
process: ``python -m bench.raw --url URL --queue Q1 --queue Q2 --prefetch P --count N``.
Prints ``{"ready": true}`` once consuming, then one JSON line with the result and exits after
``count`` acks or ``--timeout`` seconds. With ``--latency`` it also reads each body's ``data.t0``
(stamped by the benchmark's publisher) and reports publish → consume latency: the floor under
the gateway's latency at the same offered rate (``bench.run --raw-floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aio_pika
import orjson

from bench.stats import latency_summary


async def consume(
    url: str, queues: list[str], prefetch: int, count: int, timeout: float, latency: bool = False
) -> dict:
    connection = await aio_pika.connect_robust(
        url, client_properties={"connection_name": "bench-raw"}
    )
    done = asyncio.Event()
    state: dict = {"acked": 0, "first_delivery": None, "last_ack": None}
    latencies: list[float] = []

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if state["first_delivery"] is None:
            state["first_delivery"] = time.time()
        if latency:
            latencies.append(time.time() - float(orjson.loads(message.body)["data"]["t0"]))
        await message.ack()
        state["acked"] += 1
        if state["acked"] >= count:
            state["last_ack"] = time.time()
            done.set()

    async with connection:
        for name in queues:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.declare_queue(name, durable=True)
            await queue.consume(on_message)
        sys.stdout.write('{"ready": true}\n')
        sys.stdout.flush()
        try:
            await asyncio.wait_for(done.wait(), timeout=timeout)
        except TimeoutError:
            state["timed_out"] = True
            state["last_ack"] = time.time()
    if latency:
        state["latency"] = latency_summary(latencies)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", action="append", required=True)
    parser.add_argument("--prefetch", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--latency", action="store_true", help="report publish -> consume latency")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(
        consume(args.url, args.queue, args.prefetch, args.count, args.timeout, args.latency)
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
