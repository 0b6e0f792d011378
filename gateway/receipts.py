"""Delivery receipts from providers' status callbacks: matched to our message, recorded once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

_RECORD_RECEIPT = """
WITH found AS (
    SELECT m.id, m.channel, m.kind, m.campaign_id FROM messages m WHERE m.provider_message_id = $2
    UNION ALL
    SELECT m.id, m.channel, m.kind, m.campaign_id
    FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.provider_message_id = $2
    LIMIT 1
), receipt AS (
    INSERT INTO provider_receipts (provider, provider_message_id, status, message_id, created_at)
    VALUES ($1, $2, $3, (SELECT id FROM found), $5)
    ON CONFLICT DO NOTHING
    RETURNING message_id
), event AS (
    INSERT INTO message_events (message_id, status, reason, created_at)
    SELECT message_id, $3, $4, $5 FROM receipt WHERE message_id IS NOT NULL
), status AS (
    -- The message's status follows the receipt, from sent onwards only.
    UPDATE messages SET status = $3, updated_at = $5
    WHERE id = (SELECT message_id FROM receipt) AND status IN ('sent', 'delivered', 'undelivered')
)
SELECT f.id, f.channel, f.kind, f.campaign_id, EXISTS (SELECT 1 FROM receipt) AS new
FROM found f
"""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The message a receipt belongs to, and whether this receipt was new."""

    message_id: str
    channel: str
    kind: str
    campaign_id: str | None
    new: bool


async def record_receipt(
    pool: asyncpg.Pool,
    *,
    provider: str,
    provider_message_id: str,
    status: str,
    reason: str | None,
    at: datetime,
) -> Receipt | None:
    """Record a receipt once; ``None`` when no message of ours has that provider id."""
    row = await pool.fetchrow(_RECORD_RECEIPT, provider, provider_message_id, status, reason, at)
    if row is None:
        return None
    return Receipt(row["id"], row["channel"], row["kind"], row["campaign_id"], row["new"])
