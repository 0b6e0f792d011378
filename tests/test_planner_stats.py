"""``PlannerStats``: a hot table that outgrew its statistics is analysed, and the generic plans
made while it was small stop scanning it whole."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.planner_stats import PlannerStats
from gateway.store import NewMessage, Store

_FILL = (
    "INSERT INTO messages (id, channel, kind, status, job)"
    " SELECT $1 || g, 'sms', 'promotional', 'sent', '{}' FROM generate_series(1, $2) AS g"
)


async def _stats(pool: asyncpg.Pool) -> tuple[float, int]:
    async with pool.acquire() as connection:
        return tuple(await connection.fetchrow(  # type: ignore[return-value]
            "SELECT reltuples, relpages FROM pg_class WHERE oid = 'messages'::regclass"
        ))


async def test_a_table_is_analysed_when_it_has_doubled_and_not_before(
    pg_pool: asyncpg.Pool, clean: None
) -> None:
    stats = PlannerStats(pool=pg_pool, tables=("messages", "deliveries"))
    assert await stats.check() == []  # empty tables: nothing to do
    await pg_pool.execute(_FILL, "a", 3000)
    assert await stats.check() == ["messages"]  # never analysed, now ~50 pages
    tuples, pages = await _stats(pg_pool)
    assert tuples == 3000 and pages > 8
    await pg_pool.execute(_FILL, "b", 1000)  # a third more: the statistics still do
    assert await stats.check() == []
    await pg_pool.execute(_FILL, "c", 2500)  # more than twice the pages analysed
    assert await stats.check() == ["messages"]
    assert (await _stats(pg_pool))[0] == 6500


async def _histogram_bounds(pool: asyncpg.Pool, table: str, column: str) -> int:
    return int(await pool.fetchval(
        "SELECT cardinality(histogram_bounds::text::text[]) FROM pg_stats"
        " WHERE schemaname = current_schema() AND tablename = $1 AND attname = $2",
        table, column,
    ))


async def test_its_analyse_takes_a_small_sample_and_leaves_the_default_alone(
    pg_pool: asyncpg.Pool, clean: None
) -> None:
    """At the default target (100) an ANALYZE of a large table stalls a small machine for
    hundreds of milliseconds; this one samples a tenth, and sets nothing for anyone else."""
    await pg_pool.execute(_FILL, "a", 5000)  # 5,000 distinct ids
    assert await PlannerStats(pool=pg_pool, tables=("messages",)).check() == ["messages"]
    assert await _histogram_bounds(pg_pool, "messages", "id") == 11  # target 10
    assert (await _stats(pg_pool))[0] == 5000  # the size, which the plans need, is exact
    async with pg_pool.acquire() as connection:
        assert await connection.fetchval("SHOW default_statistics_target") == "100"
        await connection.execute("ANALYZE messages")  # as autovacuum's would
    assert await _histogram_bounds(pg_pool, "messages", "id") == 101
    stats = PlannerStats(pool=pg_pool, tables=("messages",), statistics_target=50)
    await pg_pool.execute(_FILL, "b", 6000)
    assert await stats.check() == ["messages"]
    assert await _histogram_bounds(pg_pool, "messages", "id") == 51


async def test_a_table_someone_else_is_working_on_is_skipped_not_waited_for(
    pg_pool: asyncpg.Pool, clean: None
) -> None:
    await pg_pool.execute(_FILL, "a", 3000)
    async with pg_pool.acquire() as other, other.transaction():
        # The lock a VACUUM or an ANALYZE holds while it works.
        await other.execute("LOCK TABLE messages IN SHARE UPDATE EXCLUSIVE MODE")
        stats = PlannerStats(pool=pg_pool, tables=("messages",))
        assert await asyncio.wait_for(stats.check(), timeout=5) == ["messages"]
        assert (await _stats(pg_pool))[0] == -1  # not analysed
    assert await stats.check() == ["messages"]  # the next turn does it
    assert (await _stats(pg_pool))[0] == 3000


async def _seq_scans(pool: asyncpg.Pool, table: str) -> int:
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        return int(await connection.fetchval(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = $1::regclass", table
        ))


async def _claim(store: Store, pool: asyncpg.Pool, message_id: str) -> None:
    now = datetime.now(UTC)
    message = NewMessage(id=message_id, channel="sms", kind="promotional", job_json="{}",
                         recipient="+14155550100", campaign_id="spring", send_at=None,
                         expires_at=None)
    [claim] = await store.claim([message], lease_until=now + timedelta(minutes=1), now=now)
    assert claim.inserted and claim.campaign_found == (message_id != "first")
    # One backend (the pool holds one connection): this makes it flush its counters, the
    # claim's included, as it goes idle after this statement.
    await pool.execute("SELECT pg_stat_force_next_flush()")


async def test_the_claims_plan_made_on_an_empty_table_is_remade_once_the_table_is_analysed(
    database_url: str, pg_pool: asyncpg.Pool, clean: None
) -> None:
    """The claim keeps one generic plan per connection (migration 010). Made while
    ``campaigns`` is empty, it hash-joins a scan of the whole table, and keeps doing so once the
    table holds 20,000 campaigns; the ANALYZE makes the connection plan it again, with an
    index."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = Store(pool=pool)
        await _claim(store, pool, "first")  # the plan is made now, on an empty table
        await pg_pool.execute(
            "INSERT INTO campaigns (id, rules) SELECT 'c' || g, '{}' FROM generate_series(1, 20000) g"
        )
        await pg_pool.execute("INSERT INTO campaigns (id, rules) VALUES ('spring', '{}')")

        before = await _seq_scans(pg_pool, "campaigns")
        await _claim(store, pool, "m1")
        assert await _seq_scans(pg_pool, "campaigns") == before + 1  # the stale plan

        assert await PlannerStats(pool=pg_pool, tables=("campaigns",)).check() == ["campaigns"]
        before = await _seq_scans(pg_pool, "campaigns")
        await _claim(store, pool, "m2")
        await _claim(store, pool, "m3")
        assert await _seq_scans(pg_pool, "campaigns") == before
    finally:
        await pool.close()


async def test_a_database_error_waits_for_the_next_turn(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    await pool.close()  # every check now fails: "pool is closed"
    stats = PlannerStats(pool=pool, interval=0.01)
    task = asyncio.create_task(stats.run())
    await asyncio.sleep(0.1)  # ~10 turns, each failing
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
