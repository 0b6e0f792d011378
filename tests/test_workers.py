"""``gateway serve --workers N``: N consumer processes, stopped together by one signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.broker import JOB_QUEUES
from gateway.workers import run_with_workers
from tests.conftest import Amqp, settings_env
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job


async def _consumers(channel: aio_pika.abc.AbstractChannel) -> list[int]:
    """The consumer count of each job queue, as RabbitMQ says now."""
    # On the underlying channel: a robust channel answers a passive declaration from its cache.
    underlay = await channel.get_underlay_channel()
    counts = []
    for name in JOB_QUEUES:
        declared = await underlay.queue_declare(name, passive=True)
        counts.append(declared.consumer_count or 0)
    return counts


async def _wait_for_consumers(channel: aio_pika.abc.AbstractChannel, count: int) -> None:
    for _ in range(300):
        if await _consumers(channel) == [count] * len(JOB_QUEUES):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"expected {count} consumers per job queue, found {await _consumers(channel)}")


async def _read_lines(stream: asyncio.StreamReader, into: list[dict[str, Any]]) -> None:
    # Drained as it comes, so two processes' logs never fill the pipe and block them.
    async for line in stream:
        if line.startswith(b"{"):
            into.append(orjson.loads(line))  # whole lines: processes never split each other's


async def test_two_workers_send_every_job_once_and_stop_together_on_sigterm(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, pg_pool: asyncpg.Pool
) -> None:
    """serve --workers 2: two consumers on each queue, 100 jobs sent once, SIGTERM ends both, 0."""
    settings = settings_for(smtp_server, prefetch=10, batch_size=5, shutdown_grace_seconds=5)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--consumer-only", "--workers", "2",
        env=settings_env(settings), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read_lines(process.stderr, lines))
    try:
        await _wait_for_consumers(amqp.channel, 2)
        total = 100
        for i in range(total):
            await amqp.publish(email_job(f"workers-{i}", to=f"user{i}@example.com"))
        await smtp_server.wait_for(total, timeout=30)
        await asyncio.sleep(0.3)
    finally:
        started = asyncio.get_running_loop().time()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=settings.shutdown_grace_seconds + 10)
        await reader
    assert asyncio.get_running_loop().time() - started < settings.shutdown_grace_seconds
    assert process.returncode == 0, lines[-5:]

    ids = [r.message["X-Gateway-Message-Id"] for r in smtp_server.received]
    assert sorted(ids) == sorted(f"workers-{i}" for i in range(total))  # all sent, none twice
    rows = await pg_pool.fetch("SELECT status, count(*) FROM messages GROUP BY status")
    assert {r["status"]: r["count"] for r in rows} == {"sent": total}
    [spawned] = [line["pids"] for line in lines if line["event"] == "workers.started"]
    assert len(spawned) == 1
    assert sum(line["event"] == "gateway.stopped" for line in lines) == 2  # parent and child
    for pid in spawned:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the child is gone, and reaped
    assert await _consumers(amqp.channel) == [0] * len(JOB_QUEUES)


async def test_a_child_that_fails_stops_the_replica_with_status_1(
    clean: None, settings_for: Any
) -> None:
    """A child ending by itself (here with status 3) stops the parent, which returns 1."""
    gateway = Gateway(settings_for(), consume=False, http=False, name="test-workers-child-fails")
    failing = (sys.executable, "-c", "raise SystemExit(3)")
    with capture_logs() as logs:
        status = await asyncio.wait_for(
            run_with_workers(gateway, children=1, command=failing), timeout=30
        )
    assert status == 1
    [ended] = [entry for entry in logs if entry["event"] == "workers.child_ended"]
    assert [code for _pid, code in ended["children"]] == [3]
    assert any(entry["event"] == "gateway.stopped" for entry in logs)
