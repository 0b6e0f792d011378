"""Our dedicated numbers: how each answers keywords, whether it forwards inbound messages, and
the scope of a STOP sent to it. The request model, its defaults and its SQL.

A number is stored in E.164 (``+14155550100``). Its texts default to the usual carrier wording;
its custom keywords are replies to whole messages (``{"HOURS": "We are open 9-5"}``) and may not
be spelt like a built-in keyword, which always wins (see :mod:`keywords.match`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keywords import built_in, normalise

__all__ = [
    "DEFAULT_HELP_TEXT",
    "DEFAULT_START_TEXT",
    "DEFAULT_STOP_TEXT",
    "MAX_KEYWORDS",
    "NumberConfig",
    "Numbers",
    "decode_cursor",
    "encode_cursor",
]

# The usual carrier wording (Twilio's defaults).
DEFAULT_STOP_TEXT = (
    "You have successfully been unsubscribed. You will not receive any more messages from this"
    " number. Reply START to resubscribe."
)
DEFAULT_START_TEXT = (
    "You have successfully been re-subscribed to messages from this number. Reply HELP for help."
    " Reply STOP to unsubscribe. Msg&Data Rates May Apply."
)
DEFAULT_HELP_TEXT = "Reply STOP to unsubscribe. Msg&Data Rates May Apply."

MAX_KEYWORDS = 100
MAX_KEYWORD_LENGTH = 30  # AWS End User Messaging's limit; longer is not a keyword people type
# One SMS body may be at most 1,600 characters at Twilio.
ReplyText = Annotated[str, Field(min_length=1, max_length=1600)]
Scope = Literal["number", "all"]


class NumberConfig(BaseModel):
    """The body of ``PUT /v1/numbers/{number}``; every field has a default."""

    # Strict: "true" is not a boolean in a stored record.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    help_text: ReplyText = DEFAULT_HELP_TEXT
    stop_text: ReplyText = DEFAULT_STOP_TEXT
    start_text: ReplyText = DEFAULT_START_TEXT
    keywords: dict[str, ReplyText] = Field(default_factory=dict)
    forward: bool = True
    opt_out_scope: Scope = "all"

    @field_validator("keywords")
    @classmethod
    def _usable_keywords(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_KEYWORDS:
            raise ValueError(f"at most {MAX_KEYWORDS} keywords")
        seen: dict[str, str] = {}
        for keyword in value:
            key = normalise(keyword)
            if not key or len(key) > MAX_KEYWORD_LENGTH:
                raise ValueError(
                    f"{keyword!r}: a keyword needs 1-{MAX_KEYWORD_LENGTH} characters besides"
                    " surrounding punctuation and spaces"
                )
            action = built_in(keyword)
            if action is not None:
                raise ValueError(f"{keyword!r} is a built-in {action.value} keyword")
            if key in seen:
                raise ValueError(f"{keyword!r} and {seen[key]!r} are the same keyword")
            seen[key] = keyword
        return value


@dataclass(frozen=True, slots=True)
class Number:
    """One registered number and its configuration."""

    number: str
    config: NumberConfig


_COLUMNS = (
    "number, help_text, stop_text, start_text, keywords::text AS keywords, forward,"
    " opt_out_scope, created_at, updated_at"
)

_PUT = f"""
INSERT INTO numbers AS n (number, help_text, stop_text, start_text, keywords, forward,
                          opt_out_scope)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
ON CONFLICT (number) DO UPDATE
    SET help_text = EXCLUDED.help_text, stop_text = EXCLUDED.stop_text,
        start_text = EXCLUDED.start_text, keywords = EXCLUDED.keywords,
        forward = EXCLUDED.forward, opt_out_scope = EXCLUDED.opt_out_scope, updated_at = now()
-- xmax is 0 only on a row this statement inserted.
RETURNING {_COLUMNS}, (n.xmax = 0) AS created
"""


def _entry(row: asyncpg.Record) -> dict[str, Any]:
    entry = dict(row)
    entry["keywords"] = orjson.loads(entry["keywords"])
    entry.pop("created", None)
    return entry


def encode_cursor(number: str) -> str:
    """The opaque cursor after ``number``: URL-safe base64, so a ``+`` survives a query string."""
    return base64.urlsafe_b64encode(number.encode()).rstrip(b"=").decode()


def decode_cursor(text: str) -> str:
    """Read back :func:`encode_cursor`; raise ``ValueError`` for anything else."""
    try:
        number = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this API returned") from None
    if not number.startswith("+"):
        raise ValueError("not a cursor this API returned")
    return number


class Numbers:
    """Our numbers over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, number: str, config: NumberConfig) -> tuple[dict[str, Any], bool]:
        """Create or replace the (E.164) number's configuration; ``(entry, created)``."""
        row = await self._pool.fetchrow(
            _PUT,
            number,
            config.help_text,
            config.stop_text,
            config.start_text,
            orjson.dumps(config.keywords).decode(),
            config.forward,
            config.opt_out_scope,
        )
        return _entry(row), bool(row["created"])

    async def get(self, number: str) -> dict[str, Any] | None:
        """The number's entry (its configuration and timestamps), or ``None``."""
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM numbers WHERE number = $1", number)
        return None if row is None else _entry(row)

    async def find(self, number: str) -> Number | None:
        """The number with its configuration, for the inbound webhooks; ``None`` if not ours."""
        entry = await self.get(number)
        if entry is None:
            return None
        fields = {name: entry[name] for name in NumberConfig.model_fields}
        return Number(number, NumberConfig.model_validate(fields))

    async def delete(self, number: str) -> bool:
        """Forget the number (its opt-outs stay); whether it was registered."""
        found = await self._pool.fetchval(
            "DELETE FROM numbers WHERE number = $1 RETURNING true", number
        )
        return bool(found)

    async def page(
        self, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` numbers after ``after`` in order, and the number the next page
        starts after (``None`` on the last page)."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM numbers WHERE $1::text IS NULL OR number > $1"
            " ORDER BY number LIMIT $2",
            after,
            limit + 1,  # one more than asked tells whether a next page exists
        )
        items = [_entry(r) for r in rows[:limit]]
        return items, items[-1]["number"] if len(rows) > limit else None
