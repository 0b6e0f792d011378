"""Data retention: gateway purge and the daily purge of GATEWAY_RETENTION_DAYS."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.retention import LOCK_KEY, PurgeBusy, Retention, parse_age, purge
from tests.conftest import Amqp, settings_env

NOW = datetime.now(timezone.utc)
OLD = NOW - timedelta(days=100)
RECENT = NOW - timedelta(days=10)
FINAL = ["sent", "delivered", "undelivered", "failed", "suppressed", "expired"]
UNFINISHED = ["queued", "processing", "deferred"]


@pytest.fixture
async def seeded(amqp: Amqp, pg_pool: asyncpg.Pool) -> None:
    """Old and recent messages in every status, each with two events, a delivery and a receipt;
    old and recent unmatched receipts and inbound SMS; an old opt-out."""
    await pg_pool.execute("TRUNCATE provider_receipts, purge_runs")
    messages = [(f"old-{s}", s, OLD) for s in FINAL + UNFINISHED]
    messages += [(f"recent-{s}", s, RECENT) for s in FINAL + UNFINISHED]
    messages += [(f"old-sent-{n}", "sent", OLD - timedelta(minutes=n)) for n in range(7)]
    await pg_pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, created_at)"
        " VALUES ($1, 'sms', 'promotional', $2, '{}', $3)",
        messages,
    )
    ids = [(m[0], m[2]) for m in messages]
    await pg_pool.executemany(
        "INSERT INTO message_events (message_id, status, created_at)"
        " VALUES ($1, 'accepted', $2), ($1, 'sent', $2)",
        ids,
    )
    await pg_pool.executemany(
        "INSERT INTO deliveries (message_id, address, status, updated_at)"
        " VALUES ($1, '+1', 'sent', $2)",
        ids,
    )
    await pg_pool.executemany(
        "INSERT INTO provider_receipts"
        " (provider, provider_message_id, status, message_id, created_at)"
        " VALUES ('twilio', 'SM-' || $1, 'delivered', $1, $2)",
        ids,
    )
    await pg_pool.executemany(
        "INSERT INTO provider_receipts (provider, provider_message_id, status, created_at)"
        " VALUES ('twilio', $1, 'delivered', $2)",
        [("SM-unknown-old", OLD), ("SM-unknown-recent", RECENT)],
    )
    await pg_pool.executemany(
        "INSERT INTO inbound_messages (provider, provider_message_id, sender, number, body, action,"
        " created_at) VALUES ('twilio', $1, '+447911123456', '+14155550199', 'hi', 'none', $2)",
        [("SM-in-old", OLD), ("SM-in-recent", RECENT)],
    )
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, source, created_at)"
        " VALUES ('sms', '+447911123456', 'keyword', $1)",
        NOW - timedelta(days=400),
    )


async def remaining(pool: asyncpg.Pool) -> dict[str, Any]:
    """What is left in each table the purge touches."""
    return {
        "messages": sorted(await _column(pool, "SELECT id FROM messages")),
        "events": sorted(await _column(pool, "SELECT DISTINCT message_id FROM message_events")),
        "deliveries": sorted(await _column(pool, "SELECT message_id FROM deliveries")),
        "receipts": sorted(await _column(
            pool, "SELECT coalesce(message_id, provider_message_id) FROM provider_receipts"
        )),
        "inbound": await _column(pool, "SELECT provider_message_id FROM inbound_messages"),
        "opt_outs": await _column(pool, "SELECT address FROM opt_outs"),
    }


async def _column(pool: asyncpg.Pool, sql: str) -> list[str]:
    return [r[0] for r in await pool.fetch(sql)]


KEPT_MESSAGES = sorted(
    [f"old-{s}" for s in UNFINISHED] + [f"recent-{s}" for s in FINAL + UNFINISHED]
)
KEPT = {
    "messages": KEPT_MESSAGES,
    "events": KEPT_MESSAGES,
    "deliveries": KEPT_MESSAGES,
    "receipts": sorted(KEPT_MESSAGES + ["SM-unknown-recent"]),
    "inbound": ["SM-in-recent"],
    "opt_outs": ["+447911123456"],
}
PURGED = {
    "messages": 13, "message_events": 26, "deliveries": 13, "provider_receipts": 14,
    "inbound_messages": 1,
}


async def test_old_finished_messages_go_with_their_records_and_the_rest_stays(
    seeded: None, pg_pool: asyncpg.Pool
) -> None:
    """Finished messages older than the cutoff lose their events, deliveries and receipts, in
    batches; unfinished and recent ones stay, and so do opt-outs, however old."""
    before = datetime.now(timezone.utc)
    result = await purge(pg_pool, older_than=timedelta(days=90), batch_size=4)
    after = datetime.now(timezone.utc)
    assert result.to_json() == PURGED
    assert await remaining(pg_pool) == KEPT
    run = await pg_pool.fetchrow("SELECT cutoff, finished_at, deleted::text FROM purge_runs")
    assert run["finished_at"] is not None
    # The cutoff is 90 days before the run (not before this module was imported: on a slow
    # machine the suite reaches this test many minutes later).
    assert before - timedelta(days=90) <= run["cutoff"] <= after - timedelta(days=90)
    assert orjson.loads(run["deleted"]) == PURGED

    again = await purge(pg_pool, older_than=timedelta(days=90))
    assert again.to_json() == dict.fromkeys(PURGED, 0)


async def test_a_purge_waits_for_no_one_while_another_holds_the_lock(
    seeded: None, pg_pool: asyncpg.Pool
) -> None:
    """With the purge lock taken, purge raises PurgeBusy and the daily run skips; nothing goes."""
    async with pg_pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            with pytest.raises(PurgeBusy):
                await purge(pg_pool, older_than=timedelta(days=90))
            assert await Retention(pool=pg_pool, days=90).run_if_due() is None
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    assert "old-sent" in (await remaining(pg_pool))["messages"]


async def test_the_daily_purge_runs_once_a_day(seeded: None, pg_pool: asyncpg.Pool) -> None:
    """The first check purges; a second within the day finds the finished run and skips."""
    retention = Retention(pool=pg_pool, days=90)
    first = await retention.run_if_due()
    assert first is not None and first.messages == 13
    assert await retention.run_if_due() is None
    assert await pg_pool.fetchval("SELECT count(*) FROM purge_runs") == 1


async def test_replicas_with_retention_purge_once_between_them(
    seeded: None, pg_pool: asyncpg.Pool, settings_for: Any, start_gateway: Any
) -> None:
    """Three consuming gateways with GATEWAY_RETENTION_DAYS=90: the old rows go, purged once."""
    settings = settings_for(retention_days=90)
    for _ in range(3):
        await start_gateway(settings)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    finished = "SELECT count(*) FROM purge_runs WHERE finished_at IS NOT NULL"
    while await pg_pool.fetchval(finished) < 1:
        assert loop.time() < deadline, "no replica purged"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # time for a second purge, were one to happen
    assert await remaining(pg_pool) == KEPT
    assert await pg_pool.fetchval("SELECT count(*) FROM purge_runs") == 1


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "purge", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


async def test_cli_purges_and_prints_what_it_deleted(
    seeded: None, pg_pool: asyncpg.Pool, settings_for: Any
) -> None:
    """gateway purge --older-than 90d deletes like purge() and prints the counts as JSON."""
    env = settings_env(settings_for())
    done = await asyncio.to_thread(run_cli, env, "--older-than", "90d")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == PURGED
    assert await remaining(pg_pool) == KEPT

    hours = await asyncio.to_thread(run_cli, env, "--older-than", "2000h")  # 83 days
    assert hours.returncode == 0, hours.stderr
    assert orjson.loads(hours.stdout)["messages"] == 0


async def test_cli_refuses_a_bad_age_and_a_held_lock(
    seeded: None, pg_pool: asyncpg.Pool, settings_for: Any
) -> None:
    """A malformed age exits 2 naming the option; a running purge makes it exit 1."""
    env = settings_env(settings_for())
    bad = await asyncio.to_thread(run_cli, env, "--older-than", "3 weeks")
    assert bad.returncode == 2
    assert "--older-than" in bad.stderr
    async with pg_pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            busy = await asyncio.to_thread(run_cli, env, "--older-than", "90d")
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    assert busy.returncode == 1
    assert "another purge is running" in busy.stderr
    assert len((await remaining(pg_pool))["messages"]) == len(KEPT_MESSAGES) + 13


@pytest.mark.parametrize(
    ("text", "age"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), (" 1d ", timedelta(days=1))],
)
def test_ages_are_days_or_hours(text: str, age: timedelta) -> None:
    """An age is a whole number of days (d) or hours (h)."""
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["90", "0d", "1.5d", "10m", "-1d", "d", ""])
def test_other_ages_are_refused(text: str) -> None:
    """Anything else, zero included, is a ValueError."""
    with pytest.raises(ValueError):
        parse_age(text)
