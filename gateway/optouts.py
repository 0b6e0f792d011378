"""Opt-outs: addresses that asked not to be contacted on a channel, and their SQL.

An opt-out is keyed by channel, normalised address and scope, records where it came from and
when, and is never purged. This module (and ``/v1/opt-outs``) works on scope ``''``, the opt-outs
that cover every number of ours; an SMS opt-out scoped to one of our numbers is made and undone
by keywords only (:mod:`gateway.inbound`). Listing pages through them with an opaque keyset
cursor over ``(created_at, channel, address)``: stable under concurrent inserts, no offsets.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict

__all__ = ["Cursor", "OptOutRequest", "OptOuts", "Source"]

Source = Literal["api", "keyword", "unsubscribe", "bounce", "provider"]


class OptOutRequest(BaseModel):
    """The optional body of ``PUT /v1/opt-outs/{channel}/{address}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    source: Source = "api"


@dataclass(frozen=True)
class Cursor:
    """The last key of a page; the next page starts after it."""

    created_at: datetime
    channel: str
    address: str

    def encode(self) -> str:
        """URL-safe base64 of the key, without padding."""
        raw = orjson.dumps([self.created_at.isoformat(), self.channel, self.address])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read back :meth:`encode`; raise ``ValueError`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, channel, address = orjson.loads(raw)
            moment = datetime.fromisoformat(created_at)
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
            raise ValueError("not a cursor this API returned") from None
        if moment.tzinfo is None or not isinstance(channel, str) or not isinstance(address, str):
            raise ValueError("not a cursor this API returned")
        return cls(moment, channel, address)


_ADD = """
WITH added AS (
    INSERT INTO opt_outs (channel, address, source) VALUES ($1, $2, $3)
    ON CONFLICT (channel, address, scope) DO NOTHING
    RETURNING channel, address, source, created_at
)
SELECT *, true AS created FROM added
UNION ALL
SELECT channel, address, source, created_at, false FROM opt_outs
WHERE channel = $1 AND address = $2 AND scope = ''
"""


class OptOuts:
    """Opt-outs over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, channel: str, address: str, source: str) -> tuple[dict[str, Any], bool]:
        """Opt the (normalised) address out; ``(entry, created)``. An existing entry stands,
        its source and time unchanged."""
        while True:
            # Both halves read the statement's snapshot: a new row comes from the first, an
            # old one from the second. Only a row committed by a concurrent add while this
            # statement waited is seen by neither; asking again finds it.
            row = await self._pool.fetchrow(_ADD, channel, address, source)
            if row is not None:
                entry = dict(row)
                return entry, entry.pop("created")

    async def get(self, channel: str, address: str) -> dict[str, Any] | None:
        """The entry for the (normalised) address, or ``None`` when it is not opted out."""
        row = await self._pool.fetchrow(
            "SELECT channel, address, source, created_at FROM opt_outs"
            " WHERE channel = $1 AND address = $2 AND scope = ''",
            channel,
            address,
        )
        return None if row is None else dict(row)

    async def remove(self, channel: str, address: str) -> bool:
        """Opt the address back in; whether it was opted out."""
        found = await self._pool.fetchval(
            "DELETE FROM opt_outs WHERE channel = $1 AND address = $2 AND scope = ''"
            " RETURNING true",
            channel,
            address,
        )
        return bool(found)

    async def page(
        self, *, channel: str | None, limit: int, after: Cursor | None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Up to ``limit`` entries after ``after`` in key order, and the cursor of the next
        page (``None`` on the last one)."""
        # Scope '' only: (created_at, channel, address) is then unique, as the cursor needs.
        conditions: list[str] = ["scope = ''"]
        args: list[Any] = []
        if channel is not None:
            args.append(channel)
            conditions.append(f"channel = ${len(args)}")
        if after is not None:
            args += [after.created_at, after.channel, after.address]
            n = len(args)
            conditions.append(f"(created_at, channel, address) > (${n - 2}, ${n - 1}, ${n})")
            # Implied by the row comparison; spelt out so that, with a channel, the index on
            # (channel, created_at, address) seeks to the cursor instead of scanning from the start.
            conditions.append(f"created_at >= ${n - 2}")
        args.append(limit + 1)  # one more than asked tells whether a next page exists
        where = f"WHERE {' AND '.join(conditions)}"
        rows = await self._pool.fetch(
            f"SELECT channel, address, source, created_at FROM opt_outs {where}"
            f" ORDER BY created_at, channel, address LIMIT ${len(args)}",
            *args,
        )
        items = [dict(r) for r in rows[:limit]]
        if len(rows) <= limit:
            return items, None
        last = items[-1]
        return items, Cursor(last["created_at"], last["channel"], last["address"])
