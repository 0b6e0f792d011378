"""CPU per job delivery on the gateway's AMQP receive path, against the real RabbitMQ.

The job queues are filled first (by a separate publishing connection, outside the measured
time); then the gateway's own ``AmqpBroker`` consumes them at the gateway's prefetch (400) and
acks them as the pipeline does, in batches of 100 with ``ack_all``. What is measured is this
process's CPU time (``time.process_time()``: user + system) from ``consume`` to the last ack:
the frame reader, aiormq's connection and channel, the consumer callback, the acks and the
event loop (uvloop), with nothing else to do; and, beside it, RabbitMQ's CPU time over the same
span (its ``beam.smp`` and helpers on this machine, from ``/proc``: delivering and settling).
Then twice as many events as jobs are published through ``publish_events`` in batches of 250
(two at a time, confirmed, to the events exchange with no queue bound, as the gateway ships),
and the CPU per event is printed. Each round publishes and drains ``--jobs`` jobs
of the benchmark's size (~240 bytes; 20 % transactional, 80 % promotional).

It runs in a vhost of its own (``gw-micro-<pid>-<hex>``, made with ``rabbitmqctl`` and deleted
at the end), so it can run beside anything.

``python -m bench.amqp_micro [--jobs 30000] [--rounds 3] [--batch 100] [--amqp-url amqp://guest:guest@127.0.0.1:5672/]``
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

from bench import infra, monitor
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


def broker_cpu() -> float:
    """CPU seconds RabbitMQ's processes on this machine have used so far."""
    total = 0.0
    for process in monitor.rabbitmq_processes():
        try:
            times = process.cpu_times()
        except Exception:  # exited meanwhile (erl_child_setup helpers come and go)
            continue
        total += times.user + times.system
    return total


async def drain(broker: AmqpBroker, jobs: int, batch_size: int) -> tuple[float, float, float]:
    """Consume and ack ``jobs`` deliveries in batches of ``batch_size``; return (CPU seconds,
    RabbitMQ's CPU seconds, wall seconds)."""
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
        if len(buffer) >= batch_size:
            loop.create_task(ack(buffer[:]))
            buffer.clear()

    async def tail() -> None:  # the last, partial batch, as the intake's batch timer would
        while True:
            await asyncio.sleep(0.005)
            if buffer:
                batch = buffer[:]
                buffer.clear()
                await ack(batch)

    cpu, rabbit, wall = time.process_time(), broker_cpu(), time.perf_counter()
    await broker.consume(on_delivery)
    flusher = loop.create_task(tail())
    try:
        await asyncio.wait_for(done, 120)
    finally:
        flusher.cancel()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    rabbit = broker_cpu() - rabbit
    await broker.stop_consuming()
    return cpu, rabbit, wall


async def publish_events(broker: AmqpBroker, events: int, batch_size: int) -> float:
    """Publish ``events`` events through the gateway's ``publish_events`` (confirmed), two
    batches at a time as two running batches would; return this process's CPU seconds."""
    body = b'{"event":"message.sent","message_id":"' + b"0" * 26 + b'","status":"sent"}'
    batch = [("message.sent", body)] * batch_size
    cpu = time.process_time()
    for _ in range(events // (2 * batch_size)):
        await asyncio.gather(broker.publish_events(batch), broker.publish_events(batch))
    return time.process_time() - cpu


async def run(url: str, jobs: int, rounds: int, batch_size: int) -> list[tuple[float, float]]:
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
                cpu, rabbit, wall = await drain(broker, jobs, batch_size)
                events_cpu = await publish_events(broker, 2 * jobs, 250)
            finally:
                await broker.close()
            per_job.append((cpu / jobs * 1e6, rabbit / jobs * 1e6))
            print(f"round {round_number}: {jobs} deliveries in batches of {batch_size}, CPU "
                  f"{cpu:.2f} s = {per_job[-1][0]:.1f} µs per delivery (RabbitMQ "
                  f"{per_job[-1][1]:.1f} µs), wall {wall:.2f} s ({jobs / wall:.0f}/s); "
                  f"{2 * jobs} events published in batches of 250: "
                  f"{events_cpu / (2 * jobs) * 1e6:.1f} µs of CPU per event", flush=True)
    finally:
        await infra.rabbitmqctl_async("delete_vhost", vhost)
    return per_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="deliveries acked together")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    per_job = uvloop.run(run(args.amqp_url, args.jobs, args.rounds, args.batch))
    print(f"median {statistics.median(p[0] for p in per_job):.1f} µs per delivery, RabbitMQ "
          f"{statistics.median(p[1] for p in per_job):.1f} µs, over {len(per_job)} rounds "
          f"(queues: {', '.join(JOB_QUEUES)})")


if __name__ == "__main__":
    main()
