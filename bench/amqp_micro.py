"""CPU per job delivery on the gateway's AMQP receive path, against the real RabbitMQ.

The job queues are filled first (by a separate publishing connection, outside the measured
time); then the gateway's own ``AmqpBroker`` consumes them at the gateway's prefetch (400) and
acks them as the pipeline does, in batches of 100 with ``ack_all``. What is measured is this
process's CPU time (``time.process_time()``: user + system) from ``consume`` to the last ack:
the frame reader, aiormq's connection and channel, the consumer callback, the acks and the
event loop (uvloop), with nothing else to do. Each round publishes and drains ``--jobs`` jobs
of the benchmark's size (~240 bytes; 20 % transactional, 80 % promotional).

It runs in a vhost of its own (``gw-micro-<pid>-<hex>``, made with ``rabbitmqctl`` and deleted
at the end), so it can run beside anything.

``python -m bench.amqp_micro [--jobs 30000] [--rounds 3] [--amqp-url amqp://guest:guest@127.0.0.1:5672/]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time

import aio_pika
import uvloop

from bench import infra
from gateway.amqp import AmqpBroker
from gateway.broker import JOB_QUEUES, JOBS_EXCHANGE, Delivery

BODY = b'{"id":"' + b"0" * 26 + b'","channel":"sms","to":{"user_id":"u-00042"},"data":{"x":"' + (
    b"a" * 150) + b'"}}'


async def fill(url: str, jobs: int) -> None:
    """Publish ``jobs`` jobs to the job exchange, confirmed, in windows of 500."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(JOBS_EXCHANGE)
        pending = []
        for index in range(jobs):
            key = "send.transactional" if index % 5 == 0 else "send.promotional"
            pending.append(exchange.publish(aio_pika.Message(BODY), routing_key=key))
            if len(pending) == 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await connection.close()


async def drain(broker: AmqpBroker, jobs: int) -> tuple[float, float]:
    """Consume and ack ``jobs`` deliveries; return (CPU seconds, wall seconds)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    buffer: list[Delivery] = []
    acked = 0

    async def ack(batch: list[Delivery]) -> None:
        nonlocal acked
        await broker.ack_all(batch)
        acked += len(batch)
        if acked >= jobs and not done.done():
            done.set_result(None)

    def on_delivery(queue: str, delivery: Delivery) -> None:
        buffer.append(delivery)
        if len(buffer) >= 100:
            loop.create_task(ack(buffer[:]))
            buffer.clear()

    async def tail() -> None:  # the last, partial batch, as the intake's batch timer would
        while True:
            await asyncio.sleep(0.005)
            if buffer:
                batch = buffer[:]
                buffer.clear()
                await ack(batch)

    cpu, wall = time.process_time(), time.perf_counter()
    await broker.consume(on_delivery)
    flusher = loop.create_task(tail())
    try:
        await asyncio.wait_for(done, 120)
    finally:
        flusher.cancel()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await broker.stop_consuming()
    return cpu, wall


async def run(url: str, jobs: int, rounds: int) -> list[float]:
    vhost = f"gw-micro-{os.getpid()}-{secrets.token_hex(3)}"
    await infra.rabbitmqctl_async("add_vhost", vhost)
    per_job = []
    try:
        await infra.rabbitmqctl_async("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        vhost_url = infra.with_vhost(url, vhost)
        for round_number in range(1, rounds + 1):
            broker = await AmqpBroker.connect(vhost_url, prefetch=400, name="amqp-micro")
            try:
                await fill(vhost_url, jobs)
                cpu, wall = await drain(broker, jobs)
            finally:
                await broker.close()
            per_job.append(cpu / jobs * 1e6)
            print(f"round {round_number}: {jobs} deliveries, CPU {cpu:.2f} s = "
                  f"{per_job[-1]:.1f} µs per delivery, wall {wall:.2f} s "
                  f"({jobs / wall:.0f}/s)", flush=True)
    finally:
        await infra.rabbitmqctl_async("delete_vhost", vhost)
    return per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    per_job = uvloop.run(run(args.amqp_url, args.jobs, args.rounds))
    print(f"median {statistics.median(per_job):.1f} µs per delivery over {len(per_job)} rounds "
          f"(queues: {', '.join(JOB_QUEUES)})")


if __name__ == "__main__":
    main()
