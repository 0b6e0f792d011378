"""SQL of the stored rules: the global limits (one row) and the rules of each campaign."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from gateway.rules import CampaignRules, Limits

__all__ = ["COUNTED_STATUSES", "PolicyStore"]

# The campaign counters answered by GET /v1/campaigns/{id}; statuses in progress
# (queued, processing) are left out.
COUNTED_STATUSES = ("sent", "suppressed", "deferred", "failed", "expired")


class PolicyStore:
    """Limits and campaign rules over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get_limits(self) -> Limits:
        """The global limits; the defaults when never set."""
        stored = await self._pool.fetchval("SELECT rules::text FROM policy")
        return Limits.from_json(None if stored is None else orjson.loads(stored))

    async def put_limits(self, limits: Limits) -> None:
        """Replace the global limits."""
        await self._pool.execute(
            "INSERT INTO policy (id, rules) VALUES (true, $1::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, updated_at = now()",
            orjson.dumps(limits.to_json()).decode(),
        )

    async def put_campaign(self, campaign_id: str, rules: CampaignRules) -> bool:
        """Create or replace a campaign's rules; whether it was created."""
        created = await self._pool.fetchval(
            "INSERT INTO campaigns AS c (id, rules) VALUES ($1, $2::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, updated_at = now()"
            " RETURNING (c.xmax = 0)",
            campaign_id,
            orjson.dumps(rules.to_json()).decode(),
        )
        return bool(created)

    async def get_campaign(self, campaign_id: str) -> CampaignRules | None:
        """A campaign's rules, or ``None`` when it has none."""
        stored = await self._pool.fetchval(
            "SELECT rules::text FROM campaigns WHERE id = $1", campaign_id
        )
        return None if stored is None else CampaignRules.from_json(orjson.loads(stored))

    async def campaign_counters(self, campaign_id: str) -> dict[str, int]:
        """How many of the campaign's messages are in each final or deferred status."""
        rows = await self._pool.fetch(
            "SELECT status, count(*) AS n FROM messages WHERE campaign_id = $1 GROUP BY status",
            campaign_id,
        )
        counts: dict[str, Any] = {r["status"]: r["n"] for r in rows}
        return {status: int(counts.get(status, 0)) for status in COUNTED_STATUSES}
