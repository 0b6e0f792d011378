"""All SQL of the message pipeline. Each batch operation is one statement, one round trip.

The pipeline claims a batch (idempotency), then records every outcome of the batch together
with its events. The HTTP API accepts single jobs; the scheduler re-queues what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import asyncpg
import orjson

from gateway.outcomes import Outcome

_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[])
        AS u(id, channel, kind, job, recipient, campaign_id, send_at, expires_at)
), claimed AS (
    INSERT INTO messages AS m (id, channel, kind, status, job, recipient, campaign_id, send_at,
                               expires_at, attempts, due_at, created_at, updated_at)
    SELECT id, channel, kind, 'processing', job::jsonb, recipient, campaign_id, send_at,
           expires_at, 1, $9, $10, $10
    FROM input
    ON CONFLICT (id) DO UPDATE
        SET status = 'processing', attempts = m.attempts + 1, due_at = EXCLUDED.due_at,
            updated_at = EXCLUDED.updated_at
        WHERE m.status = 'queued' OR (m.status = 'processing' AND m.due_at <= $10)
    RETURNING m.id, m.failures, (m.xmax = 0) AS inserted
), accepted AS (
    INSERT INTO message_events (message_id, status, created_at)
    SELECT id, 'accepted', $10 FROM claimed WHERE inserted
)
SELECT id, failures, inserted FROM claimed
"""

_RECORD = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                         $6::int[], $7::text[], $8::timestamptz[])
        AS u(id, status, reason, due_at, provider_message_id, failed, detail, at)
), updated AS (
    UPDATE messages m
    SET status = input.status, reason = input.reason, due_at = input.due_at,
        provider_message_id = coalesce(input.provider_message_id, m.provider_message_id),
        failures = m.failures + input.failed, updated_at = input.at
    FROM input WHERE m.id = input.id
)
INSERT INTO message_events (message_id, status, reason, detail, created_at)
SELECT id, status, reason, detail::jsonb, at FROM input
"""

_ACCEPT = """
WITH inserted AS (
    INSERT INTO messages (id, channel, kind, status, job, recipient, campaign_id, send_at,
                          expires_at, attempts, due_at, created_at, updated_at)
    VALUES ($1, $2, $3, 'queued', $4::jsonb, $5, $6, $7, $8, 0, $9, $10, $10)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), event AS (
    INSERT INTO message_events (message_id, status, created_at)
    SELECT id, 'accepted', $10 FROM inserted
)
SELECT (SELECT count(*) FROM inserted) = 1 AS inserted,
       (SELECT status FROM messages WHERE id = $1) AS existing_status
"""

_CLAIM_DUE = """
UPDATE messages m SET status = 'queued', due_at = $2, updated_at = $3
WHERE m.id IN (
    SELECT id FROM messages
    WHERE status IN ('queued', 'processing', 'deferred') AND due_at <= $3
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING m.id, m.kind, m.job::text AS job
"""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What the store needs of a parsed job to record it."""

    id: str
    channel: str
    kind: str
    job_json: str
    recipient: str | None
    campaign_id: str | None
    send_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A message this consumer now owns: ``failures`` so far, ``inserted`` if seen for the first time."""

    id: str
    failures: int
    inserted: bool


@dataclass(frozen=True, slots=True)
class DueMessage:
    """A message the scheduler took to re-publish."""

    id: str
    kind: str
    job_json: str


class Store:
    """The pipeline's SQL over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        """Raise if PostgreSQL does not answer."""
        await self._pool.fetchval("SELECT 1")

    async def claim(
        self, messages: Sequence[NewMessage], *, lease_until: datetime, now: datetime
    ) -> list[Claim]:
        """Record new messages and claim the batch: one statement.

        A message is claimed when it is new, when it was queued (by the API or the scheduler),
        or when a previous claim lapsed. Anything else (final, deferred, owned by a live
        consumer) is a duplicate delivery and is not returned.
        """
        rows = await self._pool.fetch(
            _CLAIM,
            [m.id for m in messages],
            [m.channel for m in messages],
            [m.kind for m in messages],
            [m.job_json for m in messages],
            [m.recipient for m in messages],
            [m.campaign_id for m in messages],
            [m.send_at for m in messages],
            [m.expires_at for m in messages],
            lease_until,
            now,
        )
        return [Claim(r["id"], r["failures"], r["inserted"]) for r in rows]

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Record the outcome of each message and its event: one statement for the batch."""
        if not outcomes:
            return
        await self._pool.execute(
            _RECORD,
            [o.message_id for o in outcomes],
            [o.status for o in outcomes],
            [o.reason for o in outcomes],
            [o.due_at for o in outcomes],
            [o.provider_message_id for o in outcomes],
            [1 if o.transient else 0 for o in outcomes],
            [orjson.dumps(o.detail).decode() if o.detail else None for o in outcomes],
            [o.at for o in outcomes],
        )

    async def accept(
        self, message: NewMessage, *, requeue_at: datetime, now: datetime
    ) -> tuple[bool, str | None]:
        """Record a job accepted over HTTP as ``queued``. Returns (new?, status if it existed)."""
        row = await self._pool.fetchrow(
            _ACCEPT,
            message.id,
            message.channel,
            message.kind,
            message.job_json,
            message.recipient,
            message.campaign_id,
            message.send_at,
            message.expires_at,
            requeue_at,
            now,
        )
        assert row is not None  # the statement always returns one row
        return bool(row["inserted"]), row["existing_status"]

    async def claim_due(self, *, limit: int, requeue_at: datetime, now: datetime) -> list[DueMessage]:
        """Take up to ``limit`` due messages for re-publishing; ``SKIP LOCKED`` keeps replicas apart."""
        rows = await self._pool.fetch(_CLAIM_DUE, limit, requeue_at, now)
        return [DueMessage(r["id"], r["kind"], r["job"]) for r in rows]

    async def make_due(self, ids: Sequence[str], *, now: datetime) -> None:
        """Hand messages whose re-publish failed straight back to the scheduler."""
        await self._pool.execute(
            "UPDATE messages SET due_at = $2 WHERE id = ANY($1::text[]) AND status = 'queued'",
            list(ids),
            now,
        )

    async def get_message(self, message_id: str) -> dict[str, Any] | None:
        """The message and its timeline, oldest event first; ``None`` if unknown."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT id, channel, kind, status, reason, attempts, campaign_id,"
                " provider_message_id, send_at, expires_at, due_at, created_at, updated_at"
                " FROM messages WHERE id = $1",
                message_id,
            )
            if row is None:
                return None
            events = await conn.fetch(
                "SELECT status, reason, detail::text AS detail, created_at FROM message_events"
                " WHERE message_id = $1 ORDER BY id",
                message_id,
            )
        message = dict(row)
        message["events"] = [
            {
                "status": e["status"],
                "reason": e["reason"],
                "timestamp": e["created_at"],
                **(orjson.loads(e["detail"]) if e["detail"] else {}),
            }
            for e in events
        ]
        return message
