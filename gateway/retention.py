"""Data retention: purge finished messages older than a cutoff, with everything recorded of them.

One purge deletes, in batches of ``batch_size`` messages per statement (each statement commits
on its own, so no lock is held for long and the pipeline keeps writing):

- messages in a final status (sent, delivered, undelivered, failed, suppressed, expired)
  created before the cutoff, with their timeline (``message_events``), their per-endpoint
  ``deliveries`` and their ``provider_receipts``;
- receipts that never matched a message, and inbound SMS, received before the cutoff.

Opt-outs are never purged, nor users, endpoints, templates or campaign counters. Unfinished
messages are kept whatever their age.

A purge holds a PostgreSQL advisory lock, so two never run at once (``gateway purge`` and the
daily one of a replica included). With ``GATEWAY_RETENTION_DAYS`` set, the scheduler of every
consuming replica asks :meth:`Retention.run_if_due` every hour; under the lock, it purges only
when no purge finished in the last day (``purge_runs``), so the replicas purge once a day between
them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import asyncpg
import orjson
import structlog

from gateway.outcomes import utcnow

__all__ = ["PurgeBusy", "PurgeResult", "Retention", "parse_age", "purge"]

log = structlog.get_logger("gateway.retention")

# Any constant will do, as long as every replica uses the same; distinct from migrate.py's.
LOCK_KEY = 0x6761_7465_7075_7267  # "gatepurg"
BATCH_SIZE = 5000
FINAL_STATUSES = ["sent", "delivered", "undelivered", "failed", "suppressed", "expired"]

_MESSAGES = """
WITH doomed AS (
    SELECT id FROM messages
    WHERE created_at < $1 AND status = ANY($3::text[])
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), events AS (
    DELETE FROM message_events e USING doomed WHERE e.message_id = doomed.id RETURNING 1
), deliveries AS (
    DELETE FROM deliveries d USING doomed WHERE d.message_id = doomed.id RETURNING 1
), receipts AS (
    DELETE FROM provider_receipts r USING doomed WHERE r.message_id = doomed.id RETURNING 1
), gone AS (
    DELETE FROM messages m USING doomed WHERE m.id = doomed.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS messages, (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM deliveries) AS deliveries, (SELECT count(*) FROM receipts) AS receipts
"""

_ORPHAN_RECEIPTS = """
DELETE FROM provider_receipts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM provider_receipts WHERE message_id IS NULL AND created_at < $1 LIMIT $2
))
"""

_INBOUND = """
DELETE FROM inbound_messages WHERE id = ANY(ARRAY(
    SELECT id FROM inbound_messages WHERE created_at < $1 ORDER BY created_at LIMIT $2
))
"""

_AGE = re.compile(r"^\s*(\d+)\s*([dh])\s*$")


class PurgeBusy(Exception):
    """Raised when another purge holds the lock (a replica's daily one, or ``gateway purge``)."""


@dataclass(slots=True)
class PurgeResult:
    """Rows deleted by one purge, per table."""

    messages: int = 0
    message_events: int = 0
    deliveries: int = 0
    provider_receipts: int = 0
    inbound_messages: int = 0

    def to_json(self) -> dict[str, int]:
        """The counts as a JSON object."""
        return asdict(self)


def parse_age(text: str) -> timedelta:
    """``90d`` → 90 days, ``12h`` → 12 hours; raise ``ValueError`` for anything else or zero."""
    found = _AGE.match(text)
    if found is None:
        raise ValueError(f"expected a number of days or hours such as 90d or 12h, not {text!r}")
    amount, unit = int(found[1]), found[2]
    if amount == 0:
        raise ValueError("the age must be more than 0")
    return timedelta(days=amount) if unit == "d" else timedelta(hours=amount)


async def purge(
    pool: asyncpg.Pool, *, older_than: timedelta, batch_size: int = BATCH_SIZE
) -> PurgeResult:
    """Purge what is older than ``older_than`` now; raise :class:`PurgeBusy` if one is running."""
    async with pool.acquire() as conn, _locked(conn):
        now = utcnow()
        return await _purge_recorded(conn, cutoff=now - older_than, now=now, batch_size=batch_size)


class Retention:
    """The daily purge of ``GATEWAY_RETENTION_DAYS``, for the scheduler to call."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        days: int,
        batch_size: int = BATCH_SIZE,
        every: timedelta = timedelta(days=1),
    ) -> None:
        self._pool = pool
        self._age = timedelta(days=days)
        self._batch_size = batch_size
        self._every = every

    async def run_if_due(self) -> PurgeResult | None:
        """Purge unless another purge runs or one finished less than a day ago; ``None`` then."""
        async with self._pool.acquire() as conn:
            try:
                async with _locked(conn):
                    now = utcnow()
                    last = await conn.fetchval(
                        "SELECT max(finished_at) FROM purge_runs WHERE finished_at IS NOT NULL"
                    )
                    if last is not None and now - last < self._every:
                        return None
                    return await _purge_recorded(
                        conn, cutoff=now - self._age, now=now, batch_size=self._batch_size
                    )
            except PurgeBusy:
                return None


@asynccontextmanager
async def _locked(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Hold the purge lock on ``conn``: a session lock, so batches commit one by one under it."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        raise PurgeBusy("another purge is running")
    try:
        yield
    except BaseException:
        # A broken or cancelled connection cannot unlock; the pool's reset on release does
        # (asyncpg runs pg_advisory_unlock_all()), as does closing the session.
        with suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        raise
    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def _purge_recorded(
    conn: asyncpg.Connection, *, cutoff: datetime, now: datetime, batch_size: int
) -> PurgeResult:
    """Record the run in ``purge_runs``, purge, record what was deleted."""
    run_id = await conn.fetchval(
        "INSERT INTO purge_runs (cutoff, started_at) VALUES ($1, $2) RETURNING id", cutoff, now
    )
    log.info("retention.started", cutoff=cutoff.isoformat())
    result = await _purge(conn, cutoff, batch_size)
    await conn.execute(
        "UPDATE purge_runs SET finished_at = $2, deleted = $3::jsonb WHERE id = $1",
        run_id, utcnow(), orjson.dumps(result.to_json()).decode(),
    )
    # The log of runs is kept as long as what they purged would have been.
    await conn.execute("DELETE FROM purge_runs WHERE started_at < $1", cutoff)
    log.info("retention.purged", cutoff=cutoff.isoformat(), **result.to_json())
    return result


async def _purge(conn: asyncpg.Connection, cutoff: datetime, batch_size: int) -> PurgeResult:
    result = PurgeResult()
    while True:
        row = await conn.fetchrow(_MESSAGES, cutoff, batch_size, FINAL_STATUSES)
        result.messages += row["messages"]
        result.message_events += row["events"]
        result.deliveries += row["deliveries"]
        result.provider_receipts += row["receipts"]
        if row["messages"] < batch_size:
            break
    result.provider_receipts += await _batches(conn, _ORPHAN_RECEIPTS, cutoff, batch_size)
    result.inbound_messages += await _batches(conn, _INBOUND, cutoff, batch_size)
    return result


async def _batches(conn: asyncpg.Connection, statement: str, cutoff: datetime, size: int) -> int:
    """Run a ``DELETE … LIMIT size`` until it deletes fewer than ``size`` rows; the total."""
    total = 0
    while True:
        status = await conn.execute(statement, cutoff, size)
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < size:
            return total
