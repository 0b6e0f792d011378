"""The durable scheduler: due work is re-queued once, whatever the number of replicas."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from gateway.scheduler import Scheduler
from gateway.store import Store
from tests.conftest import Amqp
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job


async def _insert_due(pool: asyncpg.Pool, count: int) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    await pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, due_at)"
        " VALUES ($1, 'email', 'promotional', 'deferred', $2::jsonb, $3)",
        [(f"due-{i}", orjson.dumps(email_job(f"due-{i}")).decode(), past) for i in range(count)],
    )


async def test_two_schedulers_never_take_the_same_message(
    clean: None, database_url: str, pg_pool: asyncpg.Pool
) -> None:
    """Concurrent claim_due calls from separate pools split the due rows with no overlap."""
    await _insert_due(pg_pool, 2000)
    pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=2) for _ in range(2)]
    try:
        stores = [Store(pool=p) for p in pools]
        now = datetime.now(timezone.utc)
        later = now + timedelta(minutes=15)
        taken: list[str] = []
        while True:
            batches = await asyncio.gather(
                *(s.claim_due(limit=97, requeue_at=later, now=now) for s in stores for _ in range(2))
            )
            if not any(batches):
                break
            taken += [m.id for batch in batches for m in batch]
    finally:
        for pool in pools:
            await pool.close()
    assert len(taken) == 2000
    assert len(set(taken)) == 2000
    statuses = await pg_pool.fetch("SELECT DISTINCT status FROM messages")
    assert [r["status"] for r in statuses] == ["queued"]


async def test_scheduler_republishes_due_messages_once(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """Three gateway replicas share one table of due messages: each is delivered exactly once."""
    await _insert_due(pg_pool, 300)
    settings = settings_for(smtp_server)
    for _ in range(3):
        await start_gateway(settings)
    await smtp_server.wait_for(300)
    await asyncio.sleep(0.5)
    ids = [r.message["X-Gateway-Message-Id"] for r in smtp_server.received]
    assert len(ids) == 300 and len(set(ids)) == 300


async def test_scheduler_hands_back_what_it_could_not_publish(
    clean: None, pg_pool: asyncpg.Pool
) -> None:
    """When publishing fails, the taken messages become due again at once (not after the lease)."""

    class DownBroker:
        async def publish_job(self, body: bytes, *, routing_key: str, message_id: str | None) -> None:
            raise ConnectionError("broker down")

    await _insert_due(pg_pool, 5)
    scheduler = Scheduler(
        store=Store(pool=pg_pool), broker=DownBroker(), interval=1, requeue_after=900  # type: ignore[arg-type]
    )
    assert await scheduler.tick() == 5
    due = await pg_pool.fetchval(
        "SELECT count(*) FROM messages WHERE status = 'queued' AND due_at <= now()"
    )
    assert due == 5


async def test_transactional_jobs_do_not_wait_behind_a_promotional_backlog(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """With 1,500 promotional jobs queued, a transactional job published last is sent among the first."""
    for i in range(1500):
        await amqp.publish(email_job(f"promo-{i}", to=f"p{i}@example.com"), "send.promotional")
    await amqp.publish(email_job("otp", to="otp@example.com"), "send.transactional")
    await start_gateway(settings_for(smtp_server, prefetch=50, batch_size=25))
    await smtp_server.wait_for(1500, timeout=60)
    order = [r.rcpt_tos[0] for r in smtp_server.received]
    assert order.index("otp@example.com") < 150
