"""Inbound SMS: what the three provider webhooks share once a message is verified and parsed.

:func:`receive` takes one message to one of our numbers and, in one transaction: records it
once per provider message id (a retried webhook is answered with the reply recorded the first
time and changes nothing), matches its keywords, opts the sender out or back in, decides the
auto-reply, and publishes on ``gateway.events``:

- ``inbound.sms`` for every new message, unless the number's ``forward`` is off;
- ``endpoint.opted_out`` / ``endpoint.opted_in`` for each opt-out entry the message added or
  removed (``source: keyword``).

Events are published before the transaction commits: if the broker fails, nothing is recorded,
the webhook answers 500 and the provider's retry processes the message again.

Opt-out scope. An entry in ``opt_outs`` with scope ``''`` covers every number of ours; one with
scope ``+1415…`` covers that number only. STOP to a number whose ``opt_out_scope`` is ``all``
adds the ``''`` entry, to a ``number`` one the entry for that number. START removes the entry
for that number, and for an ``all`` number the ``''`` entry too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from gateway.addresses import opt_out_key
from gateway.autoreply import Reply, decide_reply, due_reply
from gateway.broker import Broker
from gateway.errors import MessageFailed
from gateway.jobs import utc_timestamp
from gateway.numbers import Number, Numbers
from gateway.outcomes import utcnow
from keywords import Action, Match, match

__all__ = ["InboundSms", "Processed", "UnknownNumber", "receive", "sender_address"]

log = structlog.get_logger("gateway.inbound")

REPLY_WINDOW = timedelta(hours=1)


class UnknownNumber(LookupError):
    """Raised when a message is addressed to a number that is not registered as ours."""


@dataclass(frozen=True, slots=True)
class InboundSms:
    """One inbound message as a provider reported it. ``number`` is ours, in E.164; ``sender``
    as :func:`sender_address` gives it."""

    provider: str
    provider_message_id: str
    sender: str
    number: str
    body: str


@dataclass(frozen=True, slots=True)
class Processed:
    """What became of a message: the auto-reply to give (``None``: none), and whether it was a
    retry of one already processed (then nothing is to be sent again)."""

    reply: str | None
    duplicate: bool
    action: str


def sender_address(raw: str) -> str:
    """The sender as recorded and matched: E.164 when it reads as an international number,
    else as given (a short code such as ``12345``, an alphanumeric id such as ``ACME``)."""
    text = raw.strip()
    try:
        return opt_out_key("sms", text)
    except MessageFailed:
        return text


_RECORD = """
INSERT INTO inbound_messages (provider, provider_message_id, sender, number, body, action,
                              keyword, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (provider, provider_message_id) DO NOTHING
RETURNING id
"""

_LAST_MESSAGE = """
SELECT id FROM messages
WHERE channel = 'sms' AND recipient = $1 AND coalesce(job->>'from', $2::text) = $3
ORDER BY created_at DESC
LIMIT 1
"""

_OPT_OUT = """
WITH blocked AS (
    SELECT 1 FROM opt_outs
    WHERE channel = 'sms' AND address = $1 AND scope IN ('', $3)
), added AS (
    INSERT INTO opt_outs (channel, address, scope, source, created_at)
    VALUES ('sms', $1, $2, 'keyword', $4)
    ON CONFLICT (channel, address, scope) DO NOTHING
    RETURNING scope
)
SELECT EXISTS (SELECT 1 FROM blocked) AS was_blocked, (SELECT scope FROM added) AS added
"""


async def receive(
    message: InboundSms,
    *,
    pool: asyncpg.Pool,
    broker: Broker,
    default_from: str | None,
    max_replies_per_hour: int,
    now: datetime | None = None,
) -> Processed:
    """Record, match, opt out or in, decide the reply and publish; raise :class:`UnknownNumber`.

    ``default_from`` is ``GATEWAY_SMS_FROM``: the number a job without ``from`` was sent from,
    needed to find our last message to the sender from this number.
    """
    now = now or utcnow()
    number = await Numbers(pool=pool).find(message.number)
    if number is None:
        raise UnknownNumber(message.number)
    found = match(message.body, number.config.keywords)
    async with pool.acquire() as conn, conn.transaction():
        # One sender talking to one number is handled one message at a time, so concurrent
        # messages cannot both see room under the hourly reply limit.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"inbound:{message.number}:{message.sender}",
        )
        row_id = await conn.fetchval(
            _RECORD, message.provider, message.provider_message_id, message.sender,
            message.number, message.body, found.action.value, found.keyword, now,
        )
        if row_id is None:
            return await _earlier(conn, message)
        newly_opted_out, changes = await _apply(conn, found.action, message, number, now)
        due = due_reply(found, number.config, newly_opted_out=newly_opted_out)
        reply = await _reply(conn, due, message, max_per_hour=max_replies_per_hour, now=now)
        last_id = await conn.fetchval(_LAST_MESSAGE, message.sender, default_from, message.number)
        await conn.execute(
            "UPDATE inbound_messages SET reply = $2, last_message_id = $3 WHERE id = $1",
            row_id, reply.text, last_id,
        )
        events = [opt_out_event(kind, scope, message, now) for kind, scope in changes]
        if number.config.forward:
            events.append(inbound_event(message, found, reply.text, last_id, now))
        if events:
            await broker.publish_events(events)
    log.info(
        "inbound.received",
        provider=message.provider,
        provider_message_id=message.provider_message_id,
        action=found.action.value,
        replied=reply.text is not None,
        reply_withheld=reply.withheld.value if reply.withheld else None,
    )
    return Processed(reply.text, duplicate=False, action=found.action.value)


async def _earlier(conn: asyncpg.Connection, message: InboundSms) -> Processed:
    """The answer given to the first delivery of a retried message."""
    row = await conn.fetchrow(
        "SELECT reply, action FROM inbound_messages"
        " WHERE provider = $1 AND provider_message_id = $2",
        message.provider, message.provider_message_id,
    )
    log.info("inbound.duplicate", provider=message.provider,
             provider_message_id=message.provider_message_id)
    return Processed(row["reply"], duplicate=True, action=row["action"])


async def _reply(
    conn: asyncpg.Connection, due: str | None, message: InboundSms, *, max_per_hour: int,
    now: datetime,
) -> Reply:
    """``due`` unless loop protection withholds it (replies counted over the last hour)."""
    replies = 0
    if due is not None:
        replies = await conn.fetchval(
            "SELECT count(*) FROM inbound_messages WHERE number = $1 AND sender = $2"
            " AND reply IS NOT NULL AND created_at > $3",
            message.number, message.sender, now - REPLY_WINDOW,
        )
    return decide_reply(
        due, sender=message.sender, replies_last_hour=replies, max_per_hour=max_per_hour
    )


async def _apply(
    conn: asyncpg.Connection, action: Action, message: InboundSms, number: Number, at: datetime
) -> tuple[bool, list[tuple[str, str]]]:
    """Opt the sender out or in as ``action`` asks; ``(newly opted out, [(event, scope)])``.

    "Newly" means the sender could still receive from this number before: a repeated STOP
    gets no second confirmation. A sender that is not a phone number has no opt-out to keep.
    """
    if action not in (Action.opt_out, Action.opt_in) or not _is_phone(message.sender):
        return False, []
    if action is Action.opt_out:
        scope = message.number if number.config.opt_out_scope == "number" else ""
        row = await conn.fetchrow(_OPT_OUT, message.sender, scope, message.number, at)
        changes = [] if row["added"] is None else [("endpoint.opted_out", scope)]
        return not row["was_blocked"], changes
    scopes = [message.number] + ([""] if number.config.opt_out_scope == "all" else [])
    removed = await conn.fetch(
        "DELETE FROM opt_outs WHERE channel = 'sms' AND address = $1 AND scope = ANY($2::text[])"
        " RETURNING scope",
        message.sender, scopes,
    )
    return False, [("endpoint.opted_in", scope) for scope in sorted(r["scope"] for r in removed)]


def _is_phone(sender: str) -> bool:
    try:
        return opt_out_key("sms", sender) == sender
    except MessageFailed:
        return False


def inbound_event(
    message: InboundSms, found: Match, reply: str | None, last_message_id: str | None, at: datetime
) -> tuple[str, bytes]:
    """The ``inbound.sms`` event; ``keyword`` and ``reply`` only when there is one."""
    body: dict[str, Any] = {
        "event": "inbound.sms",
        "from": message.sender,
        "to": message.number,
        "body": message.body,
        "provider": message.provider,
        "provider_message_id": message.provider_message_id,
        "action": found.action.value,
        "last_message_id": last_message_id,
        "timestamp": utc_timestamp(at),
    }
    if found.keyword is not None:
        body["keyword"] = found.keyword
    if reply is not None:
        body["reply"] = reply
    return "inbound.sms", orjson.dumps(body)


def opt_out_event(kind: str, scope: str, message: InboundSms, at: datetime) -> tuple[str, bytes]:
    """``endpoint.opted_out`` or ``endpoint.opted_in`` for one entry a keyword changed.

    ``scope`` is ``all`` for the entry covering every number of ours, ``number`` for the one
    covering ``number`` only.
    """
    body = {
        "event": kind,
        "channel": "sms",
        "address": message.sender,
        "scope": "number" if scope else "all",
        "source": "keyword",
        "number": message.number,
        "timestamp": utc_timestamp(at),
    }
    return kind, orjson.dumps(body)
