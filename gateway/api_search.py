"""``GET /v1/messages``: find messages for support, newest first, a page at a time.

Query parameters, all optional: ``address`` (normalised like the pipeline does, matched without
regard to case; its channel is guessed from its shape unless ``channel`` is given), ``status``
(one or several, comma-separated, as ``GET /v1/messages/{id}`` shows them), ``campaign_id``,
``channel``, ``since`` (created at or after; a date or an RFC 3339 time), ``limit`` (1-200,
default 50) and ``cursor`` (the ``next_cursor`` of the previous page).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timezone
from typing import Any

from aiohttp import web

from gateway.addresses import normalise_address
from gateway.api import json_response, public_status, requires
from gateway.api_reports import CHANNELS, campaign_id_of
from gateway.api_support import invalid, pool_of
from gateway.errors import MessageFailed
from gateway.keys import Scope
from gateway.outcomes import Status
from gateway.search import Cursor, SearchQuery, search_messages

__all__ = ["search_routes"]

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
# Public statuses and the stored ones each stands for.
_STATUSES: dict[str, tuple[str, ...]] = {
    **{s.value: (s.value,) for s in Status if s is not Status.accepted},
    Status.accepted.value: ("queued", "processing"),
}

def search_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [web.get("/v1/messages", get_messages)]


@requires(Scope.read)
async def get_messages(request: web.Request) -> web.Response:
    """One page of matching messages and the cursor of the next (``null`` on the last page)."""
    rows, cursor = await search_messages(pool_of(request), search_query(request.query))
    next_cursor = cursor.encode() if cursor else None
    return json_response({"messages": [_message(r) for r in rows], "next_cursor": next_cursor})


def search_query(params: Mapping[str, str]) -> SearchQuery:
    """The query string as a :class:`SearchQuery`; 422 naming the parameter otherwise."""
    channel = params.get("channel") or None
    if channel is not None and channel not in CHANNELS:
        raise invalid(f"channel: must be one of {', '.join(CHANNELS)}")
    address = params.get("address") or None
    return SearchQuery(
        address=address_key(address, channel) if address is not None else None,
        statuses=_statuses(params.get("status") or None),
        campaign_id=campaign_id_of(params),
        channel=channel,
        since=_since(params.get("since") or None),
        after=_cursor(params.get("cursor") or None),
        limit=_limit(params.get("limit") or None),
    )


def address_key(address: str, channel: str | None) -> str:
    """The address as the pipeline records it, in lower case (the search ignores case)."""
    guessed = channel or _channel_of(address)
    try:
        return normalise_address(guessed, address).lower()
    except MessageFailed as exc:
        raise invalid(f"address: {exc.reason}") from None


def _channel_of(address: str) -> str:
    """The channel an address reads as: an ``@`` is email, a leading ``+`` a phone number."""
    if "@" in address:
        return "email"
    return "sms" if address.strip().startswith("+") else "push"


def _statuses(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    stored: list[str] = []
    for name in text.split(","):
        if name.strip() not in _STATUSES:
            raise invalid(f"status: {name.strip()!r} is not one of {', '.join(sorted(_STATUSES))}")
        stored += _STATUSES[name.strip()]
    return tuple(stored)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), timezone.utc)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        pass
    raise invalid("since: a date or an RFC 3339 time with its offset expected")


def _cursor(text: str | None) -> Cursor | None:
    try:
        return Cursor.decode(text) if text is not None else None
    except ValueError as exc:
        raise invalid(f"cursor: {exc}") from None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid(f"limit: a whole number from 1 to {MAX_LIMIT} expected")
    return int(text)


def _message(row: dict[str, Any]) -> dict[str, Any]:
    recipient = row["recipient"]
    to = {"address": recipient} if recipient is not None else {"user_id": row["user_id"]}
    return {
        "id": row["id"],
        "channel": row["channel"],
        "kind": row["kind"],
        "status": public_status(row["status"]),
        "reason": row["reason"],
        "to": to,
        "campaign_id": row["campaign_id"],
        "provider_message_id": row["provider_message_id"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
