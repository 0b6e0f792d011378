"""``Store.warm_up``: the hot path's statements are ready on each connection before the first job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.store import NewMessage, Store

TABLES = ("messages", "message_events", "deliveries", "opt_outs", "daily_counters",
          "campaign_counters")


async def _prepared(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch("SELECT statement FROM pg_prepared_statements")
    return [r["statement"] for r in rows]


async def test_each_connection_holds_the_claim_caps_and_record_and_nothing_changed(
    database_url: str, clean: None
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=3)
    try:
        await Store(pool=pool).warm_up(3)
        held = [await pool.acquire() for _ in range(3)]
        try:
            assert len({c.get_server_pid() for c in held}) == 3
            for connection in held:
                statements = await _prepared(connection)
                assert any("gateway_claim(" in s for s in statements)  # the claim
                assert any("gateway_grant_caps(" in s for s in statements)
                assert any("INSERT INTO deliveries AS d" in s for s in statements)  # the record
            for table in TABLES:
                assert await held[0].fetchval(f"SELECT count(*) FROM {table}") == 0, table
        finally:
            for connection in held:
                await pool.release(connection)
    finally:
        await pool.close()


async def test_the_first_claim_after_warm_up_prepares_nothing_new(
    database_url: str, clean: None
) -> None:
    """The statements are in asyncpg's own cache, where the pipeline's calls look."""
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    try:
        store = Store(pool=pool)
        await store.warm_up(1)
        async with pool.acquire() as connection:
            before = sorted(await _prepared(connection))
        now = datetime.now(UTC)
        message = NewMessage(id="warm-1", channel="sms", kind="transactional", job_json="{}",
                             recipient="+14155550100", campaign_id=None, send_at=None,
                             expires_at=None)
        [claim] = await store.claim([message], lease_until=now + timedelta(minutes=1), now=now)
        assert claim.id == "warm-1" and claim.inserted
        async with pool.acquire() as connection:
            assert sorted(await _prepared(connection)) == before
    finally:
        await pool.close()
