"""Users and their endpoints: the request models and their SQL.

A user is an id, an IANA time zone, a locale, up to 40 custom attributes and any number of
endpoints (several per channel allowed). The models validate and normalise everything on the
way in, so what is stored is what the pipeline sends to: ``Jane@Example.COM`` is stored as
``Jane@example.com``, ``+1 (415) 555-0100`` as ``+14155550100``.

The same models serve ``PUT``/``PATCH /v1/users/{id}`` and the bulk import, and
:meth:`Recipients.upsert` writes a whole batch of users with their endpoints in one statement.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Sequence

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway.addresses import normalise_address
from gateway.errors import MessageFailed
from gateway.policy import valid_timezone

__all__ = [
    "MAX_ATTRIBUTES",
    "Endpoint",
    "InvalidUser",
    "Recipients",
    "User",
    "UserPatch",
]

MAX_ATTRIBUTES = 40
MAX_ATTRIBUTE_KEY_LENGTH = 64
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ENDPOINTS = 100

ChannelName = Literal["email", "sms", "push"]
Platform = Literal["apns", "fcm"]
UserId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]

# BCP 47, the common part: language, optional script, optional region (pt-BR, zh-Hant-TW,
# es-419). Underscores are accepted as the POSIX spelling and written back as hyphens.
_LOCALE = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidUser(ValueError):
    """Raised by :meth:`Recipients.patch` when the merged user breaks a rule; says which."""


class _Model(BaseModel):
    # Strict: "true" is not a boolean and 1 is not a string in a stored record.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Endpoint(_Model):
    """One address of a user. ``platform`` is required for push and refused otherwise."""

    channel: ChannelName
    address: str
    platform: Platform | None = Field(None, validate_default=True)
    active: bool = True

    @field_validator("address")
    @classmethod
    def _normalise(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is None:  # the channel's own error says enough
            return value
        try:
            return normalise_address(channel, value)
        except MessageFailed as exc:
            raise ValueError(exc.reason) from None

    @field_validator("platform")
    @classmethod
    def _platform_for_push_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
        if channel == "push" and value is None:
            raise ValueError("a push endpoint needs a platform: 'apns' or 'fcm'")
        if channel in ("email", "sms") and value is not None:
            raise ValueError(f"only push endpoints have a platform, not {channel}")
        return value

    def key(self) -> tuple[str, str]:
        """What identifies the endpoint within its user."""
        return self.channel, self.address


class _UserFields(_Model):
    timezone: str | None = None
    locale: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=MAX_ENDPOINTS)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and not valid_timezone(value):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Lisbon)")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return None if value is None else normalise_locale(value)

    @field_validator("endpoints")
    @classmethod
    def _no_duplicates(cls, value: list[Endpoint]) -> list[Endpoint]:
        seen: dict[tuple[str, str], int] = {}
        for index, endpoint in enumerate(value):
            first = seen.setdefault(endpoint.key(), index)
            if first != index:
                raise ValueError(
                    f"{endpoint.channel} {endpoint.address} is listed twice"
                    f" (endpoints {first} and {index})"
                )
        return value


class User(_UserFields):
    """A whole user, as ``PUT /v1/users/{id}`` and the import take it. A null attribute is
    the same as a missing one."""

    id: UserId

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in value.items() if v is not None}
        check_attributes(kept)
        return kept


class UserPatch(_UserFields):
    """A partial user for ``PATCH``: ``timezone`` and ``locale`` are replaced when present,
    attributes merged (null removes the key), endpoints added or replaced by (channel, address).
    """

    id: UserId | None = None

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The count is checked after the merge (Recipients.patch); keys and values now.
        check_attributes({k: v for k, v in value.items() if v is not None}, count=False)
        for key in value:
            check_attribute_key(key)
        return value


def normalise_locale(value: str) -> str:
    """``pt_br`` → ``pt-BR``; ``ValueError`` unless it is language[-Script][-REGION]."""
    match = _LOCALE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid locale {value!r} (BCP 47 such as pt-BR or zh-Hant-TW expected)")
    language, script, region = match.groups()
    parts = [
        language.lower(),
        script.title() if script else None,
        region.upper() if region else None,
    ]
    return "-".join(p for p in parts if p)


def check_attribute_key(key: str) -> None:
    """Raise ``ValueError`` unless ``key`` is 1-64 characters without control characters."""
    if not key or len(key) > MAX_ATTRIBUTE_KEY_LENGTH or _CONTROL.search(key):
        raise ValueError(
            f"attribute names are 1-{MAX_ATTRIBUTE_KEY_LENGTH} characters without control"
            f" characters, got {key[:80]!r}"
        )


def check_attributes(attributes: dict[str, Any], *, count: bool = True) -> None:
    """Raise ``ValueError`` saying what is wrong with a set of attributes to store."""
    if count and len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes, got {len(attributes)}")
    for key, value in attributes.items():
        check_attribute_key(key)
        try:
            encoded = orjson.dumps(value)
        except TypeError as exc:
            raise ValueError(f"attribute {key!r} is not a JSON value: {exc}") from None
        if len(encoded) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise ValueError(
                f"attribute {key!r} is {len(encoded)} bytes as JSON; at most"
                f" {MAX_ATTRIBUTE_VALUE_BYTES}"
            )
        if b"\\u0000" in encoded:
            # PostgreSQL's jsonb cannot hold NUL.
            raise ValueError(f"attribute {key!r} contains a NUL character")


_UPSERT = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        AS i(id, timezone, locale, attributes)
), upserted AS (
    INSERT INTO users AS u (id, timezone, locale, attributes)
    SELECT id, timezone, locale, attributes::jsonb FROM input
    ON CONFLICT (id) DO UPDATE
        SET timezone = EXCLUDED.timezone, locale = EXCLUDED.locale,
            attributes = EXCLUDED.attributes, updated_at = now()
    RETURNING (u.xmax = 0) AS inserted
), wanted AS (
    SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::boolean[])
        AS w(user_id, channel, address, platform, active)
), dropped AS (
    -- Endpoints no longer listed go; those still listed keep their created_at (the send order).
    DELETE FROM endpoints AS e
    WHERE e.user_id = ANY ($1::text[])
      AND NOT EXISTS (SELECT 1 FROM wanted AS w
                      WHERE (w.user_id, w.channel, w.address) = (e.user_id, e.channel, e.address))
), written AS (
    INSERT INTO endpoints AS e (user_id, channel, address, platform, active)
    SELECT user_id, channel, address, platform, active FROM wanted
    ON CONFLICT (user_id, channel, address) DO UPDATE
        SET platform = EXCLUDED.platform, active = EXCLUDED.active
)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated
FROM upserted
"""

_SELECT_USER = """
SELECT u.id, u.timezone, u.locale, u.attributes::text AS attributes,
       coalesce((SELECT json_agg(json_build_object('channel', e.channel, 'address', e.address,
                                                   'platform', e.platform, 'active', e.active)
                                 ORDER BY e.created_at, e.channel, e.address)
                 FROM endpoints AS e WHERE e.user_id = u.id)::text, '[]') AS endpoints,
       u.created_at, u.updated_at
FROM users AS u WHERE u.id = $1
"""

_UPSERT_ENDPOINTS = """
INSERT INTO endpoints AS e (user_id, channel, address, platform, active)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::boolean[])
ON CONFLICT (user_id, channel, address) DO UPDATE
    SET platform = EXCLUDED.platform, active = EXCLUDED.active
"""


class Recipients:
    """Users and endpoints over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert(self, users: Sequence[User]) -> tuple[int, int]:
        """Create or replace users, endpoint sets included: one statement.

        Returns ``(inserted, updated)``. A user listed twice is written once, as its last
        occurrence, and the earlier one counts as an update (as it would in two calls).
        """
        latest = {user.id: user for user in users}
        superseded = len(users) - len(latest)
        if not latest:
            return 0, superseded
        # In id order, so that two overlapping batches lock their rows in the same order.
        ordered = sorted(latest.values(), key=lambda u: u.id)
        endpoints = [(u.id, e) for u in ordered for e in u.endpoints]
        row = await self._pool.fetchrow(
            _UPSERT,
            [u.id for u in ordered],
            [u.timezone for u in ordered],
            [u.locale for u in ordered],
            [orjson.dumps(u.attributes).decode() for u in ordered],
            [user_id for user_id, _ in endpoints],
            [e.channel for _, e in endpoints],
            [e.address for _, e in endpoints],
            [e.platform for _, e in endpoints],
            [e.active for _, e in endpoints],
        )
        assert row is not None  # an aggregate always returns one row
        return row["inserted"], row["updated"] + superseded

    async def get(self, user_id: str) -> dict[str, Any] | None:
        """The user as the API answers it, endpoints oldest first; ``None`` if unknown."""
        return _user(await self._pool.fetchrow(_SELECT_USER, user_id))

    async def patch(self, user_id: str, patch: UserPatch) -> dict[str, Any] | None:
        """Apply ``patch`` under a row lock; the user afterwards, or ``None`` if unknown.

        Raises :class:`InvalidUser` when the merged attributes would be more than 40.
        """
        given = patch.model_fields_set
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(
                "SELECT attributes::text FROM users WHERE id = $1 FOR UPDATE", user_id
            )
            if stored is None:
                return None
            attributes = orjson.loads(stored)
            for key, value in patch.attributes.items():
                if value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
            if len(attributes) > MAX_ATTRIBUTES:
                raise InvalidUser(
                    f"attributes: at most {MAX_ATTRIBUTES} attributes, the merge would give"
                    f" {len(attributes)}"
                )
            await conn.execute(
                "UPDATE users SET attributes = $2::jsonb, updated_at = now(),"
                " timezone = CASE WHEN $3 THEN $4 ELSE timezone END,"
                " locale = CASE WHEN $5 THEN $6 ELSE locale END"
                " WHERE id = $1",
                user_id,
                orjson.dumps(attributes).decode(),
                "timezone" in given,
                patch.timezone,
                "locale" in given,
                patch.locale,
            )
            if patch.endpoints:
                await conn.execute(
                    _UPSERT_ENDPOINTS,
                    user_id,
                    [e.channel for e in patch.endpoints],
                    [e.address for e in patch.endpoints],
                    [e.platform for e in patch.endpoints],
                    [e.active for e in patch.endpoints],
                )
            return _user(await conn.fetchrow(_SELECT_USER, user_id))

    async def delete(self, user_id: str) -> bool:
        """Remove the user and, by cascade, its endpoints; whether it existed."""
        found = await self._pool.fetchval("DELETE FROM users WHERE id = $1 RETURNING true", user_id)
        return bool(found)


def _user(row: asyncpg.Record | None) -> dict[str, Any] | None:
    if row is None:
        return None
    user = dict(row)
    user["attributes"] = orjson.loads(row["attributes"])
    user["endpoints"] = orjson.loads(row["endpoints"])
    return user
