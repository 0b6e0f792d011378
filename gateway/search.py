"""Messages read for support: one message's timeline, and a search newest first, filtered, paged
with an opaque keyset cursor.

The key is ``(created_at, id)``, unique and fixed for the life of a message, so paging is stable
while messages keep arriving: a page starts strictly after the last key of the previous one
(no offsets, no gaps, no repeats). An address finds the messages sent to it as a raw address
(``messages.recipient``) and the ``user_id`` messages that reached it as an endpoint
(``deliveries.address``), case-insensitively; each side walks its own index newest first and
stops after one page (``migrations/008_reporting.sql``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

__all__ = ["Cursor", "SearchQuery", "message_timeline", "search_messages"]

_COLUMNS = """m.id, m.channel, m.kind, m.status, m.reason, m.recipient,
       m.job->'to'->>'user_id' AS user_id, m.campaign_id, m.provider_message_id, m.attempts,
       m.created_at, m.updated_at"""

# One page of one side: newest first from the cursor. {where} holds the filters.
_PAGE = f"""
SELECT {_COLUMNS}
FROM messages m
WHERE {{where}}
ORDER BY m.created_at DESC, m.id DESC
LIMIT {{limit}}
"""

_ADDRESS_SIDES = "lower(m.recipient) = $1", (
    "m.id IN (SELECT d.message_id FROM deliveries d WHERE lower(d.address) = $1)"
)


@dataclass(frozen=True)
class Cursor:
    """The key of the last message of a page; the next page starts after it."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        """URL-safe base64 of the key, without padding."""
        raw = orjson.dumps([self.created_at.isoformat(), self.id])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read back :meth:`encode`; raise ``ValueError`` for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, message_id = orjson.loads(raw)
            moment = datetime.fromisoformat(created_at)
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
            raise ValueError("not a cursor this API returned") from None
        if moment.tzinfo is None or not isinstance(message_id, str) or "\x00" in message_id:
            raise ValueError("not a cursor this API returned")
        return cls(moment, message_id)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """What to look for; ``None`` is no filter. ``address`` is in normal form, lower case."""

    address: str | None = None
    statuses: tuple[str, ...] | None = None  # stored statuses
    campaign_id: str | None = None
    channel: str | None = None
    since: datetime | None = None
    after: Cursor | None = None
    limit: int = 50


async def search_messages(
    pool: asyncpg.Pool, query: SearchQuery
) -> tuple[list[dict[str, Any]], Cursor | None]:
    """One page of messages, newest first, and the cursor of the next (``None``: the last)."""
    filters, args = _filters(query, first=2 if query.address is not None else 1)
    limit = query.limit + 1  # one more than a page says whether another follows
    if query.address is None:
        sql = _PAGE.format(where=" AND ".join(filters) or "true", limit=limit)
    else:
        sides = [
            "(" + _PAGE.format(where=" AND ".join([side, *filters]), limit=limit) + ")"
            for side in _ADDRESS_SIDES
        ]
        sql = (
            f"SELECT * FROM ({' UNION ALL '.join(sides)}) AS found"
            f" ORDER BY created_at DESC, id DESC LIMIT {limit}"
        )
        args = [query.address, *args]
    rows = [dict(r) for r in await pool.fetch(sql, *args)]
    if len(rows) <= query.limit:
        return rows, None
    rows = rows[: query.limit]
    return rows, Cursor(rows[-1]["created_at"], rows[-1]["id"])


def _filters(query: SearchQuery, *, first: int) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``m`` and their arguments, numbered from ``$first``."""
    conditions: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${first + len(args) - 1}"

    if query.statuses is not None:
        conditions.append(f"m.status = ANY({arg(list(query.statuses))}::text[])")
    if query.campaign_id is not None:
        conditions.append(f"m.campaign_id = {arg(query.campaign_id)}")
    if query.channel is not None:
        conditions.append(f"m.channel = {arg(query.channel)}")
    if query.since is not None:
        conditions.append(f"m.created_at >= {arg(query.since)}")
    if query.after is not None:
        at, message_id = arg(query.after.created_at), arg(query.after.id)
        # The first condition lets the index range start at the cursor; the second is exact.
        conditions.append(f"m.created_at <= {at} AND (m.created_at, m.id) < ({at}, {message_id})")
    return conditions, args


async def message_timeline(pool: asyncpg.Pool, message_id: str) -> dict[str, Any] | None:
    """The message (``GET /v1/messages/{id}``) with its deliveries and the timeline of its
    events, oldest first; ``None`` if unknown."""
    async with pool.acquire() as conn:
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
        deliveries = await conn.fetch(
            "SELECT address, status, reason, provider_message_id, updated_at FROM deliveries"
            " WHERE message_id = $1 ORDER BY address",
            message_id,
        )
    message = dict(row)
    message["deliveries"] = [dict(d) for d in deliveries]
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
