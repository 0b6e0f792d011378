"""API keys: scopes, the key format, the ``api_keys`` table and the verifier the API asks.

A key is ``gw_<id>_<secret>``: ``id`` is 8 hex digits that name the row, ``secret`` is 32
random bytes, URL-safe base64. It is shown once, when it is made; only ``sha256(secret)`` is
stored. A fast hash is right here: the secret is 256 random bits, so there is nothing to guess
and nothing a slow password hash (bcrypt, argon2) would protect, while every request pays for
the check.

Scopes form a chain, ``admin`` ⊇ ``send`` ⊇ ``read``: a key may do what its scope names and
everything below it. ``GATEWAY_API_TOKEN`` is the bootstrap key, with scope ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Callable

import asyncpg

__all__ = [
    "ApiKeys",
    "KeyInfo",
    "Keyring",
    "NAME_PATTERN",
    "NameTaken",
    "Principal",
    "Scope",
    "StoredKey",
    "parse_key",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
_KEY = re.compile(r"^gw_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
# last_used_at is written at most this often per key and process: a write per request would
# turn every read into a write.
TOUCH_EVERY = timedelta(seconds=60)


class Scope(str, Enum):
    """What a key may do; each scope includes the ones below it."""

    read = "read"
    send = "send"
    admin = "admin"

    def allows(self, needed: Scope) -> bool:
        """Whether a key of this scope may call a route that needs ``needed``."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Scope.read: 0, Scope.send: 1, Scope.admin: 2}


class NameTaken(Exception):
    """Raised by :meth:`ApiKeys.create` when an active key already has the name."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, name and scope (id ``bootstrap`` for GATEWAY_API_TOKEN)."""

    key_id: str
    name: str
    scope: Scope


@dataclass(frozen=True)
class StoredKey:
    """A row as the verifier needs it."""

    id: str
    name: str
    scope: Scope
    secret_hash: bytes
    revoked: bool


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: everything but the secret, which is never kept."""

    id: str
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope.value,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


def valid_name(name: str) -> bool:
    """1-100 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit."""
    return _NAME.fullmatch(name) is not None


def parse_key(token: str) -> tuple[str, str] | None:
    """The id and secret of a key, or ``None`` when ``token`` is not in the key format."""
    match = _KEY.fullmatch(token)
    return (match[1], match[2]) if match else None


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key() -> tuple[str, str, str]:
    """A fresh ``(id, secret, key)``."""
    key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    return key_id, secret, f"gw_{key_id}_{secret}"


_COLUMNS = "id, name, scope, created_at, last_used_at, revoked_at"


class ApiKeys:
    """The ``api_keys`` table."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, name: str, scope: Scope, *, now: datetime) -> tuple[KeyInfo, str]:
        """A new key and its one-time text; raises :class:`NameTaken`."""
        while True:
            key_id, secret, key = new_key()
            try:
                row = await self._pool.fetchrow(
                    "INSERT INTO api_keys (id, name, scope, secret_hash, created_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING"
                    f" RETURNING {_COLUMNS}",
                    key_id,
                    name,
                    scope.value,
                    hash_secret(secret),
                    now,
                )
            except asyncpg.UniqueViolationError:
                raise NameTaken(name) from None
            if row is not None:  # else the 32-bit id was taken: draw again
                return _info(row), key

    async def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_info(r) for r in rows]

    async def revoke(
        self, id_or_name: str, *, now: datetime, by_name: bool = True
    ) -> KeyInfo | None:
        """Revoke the key with this id, else (``by_name``) the active key with this name;
        ``None`` if neither. Revoking a revoked key changes nothing and answers it as it is.
        """
        row = await self._pool.fetchrow(
            "WITH target AS ("
            "  SELECT id FROM api_keys"
            "  WHERE id = $1 OR ($3 AND name = $1 AND revoked_at IS NULL)"
            "  ORDER BY id = $1 DESC LIMIT 1"
            ") UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, $2) FROM target"
            " WHERE k.id = target.id"
            " RETURNING k.id, k.name, k.scope, k.created_at, k.last_used_at, k.revoked_at",
            id_or_name,
            now,
            by_name,
        )
        return _info(row) if row is not None else None

    async def find(self, key_id: str) -> StoredKey | None:
        """The row the verifier checks a presented key against."""
        row = await self._pool.fetchrow(
            "SELECT id, name, scope, secret_hash, revoked_at IS NOT NULL AS revoked"
            " FROM api_keys WHERE id = $1",
            key_id,
        )
        if row is None:
            return None
        return StoredKey(
            row["id"], row["name"], Scope(row["scope"]), row["secret_hash"], row["revoked"]
        )

    async def touch(self, key_id: str, *, now: datetime) -> None:
        """Record a use; a no-op when another process recorded one within the minute."""
        await self._pool.execute(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1"
            " AND (last_used_at IS NULL OR last_used_at <= $2::timestamptz - $3::interval)",
            key_id,
            now,
            TOUCH_EVERY,
        )


def _info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        id=row["id"],
        name=row["name"],
        scope=Scope(row["scope"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class Keyring:
    """Turns a bearer token into a :class:`Principal`, or ``None`` for a token that is refused.

    Rows found are kept ``ttl`` seconds per process, so a revocation takes effect everywhere
    within ``ttl``; the secret is checked against the row's hash on every request, in constant
    time. Unknown ids are not remembered: a stream of made-up keys cannot grow the cache.
    """

    def __init__(
        self,
        *,
        bootstrap: str | None,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bootstrap = bootstrap.encode() if bootstrap is not None else None
        self._ttl = ttl
        self._clock = clock
        self._rows: dict[str, tuple[float, StoredKey]] = {}
        self._touched: dict[str, float] = {}

    async def verify(self, token: str, keys: ApiKeys, *, now: datetime) -> Principal | None:
        """The caller that ``token`` proves, ``keys`` being where keys are looked up."""
        if self._bootstrap is not None and hmac.compare_digest(token.encode(), self._bootstrap):
            return Principal("bootstrap", "GATEWAY_API_TOKEN", Scope.admin)
        parsed = parse_key(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        row = await self._row(key_id, keys)
        if (
            row is None
            or row.revoked
            or not hmac.compare_digest(hash_secret(secret), row.secret_hash)
        ):
            return None
        await self._touch(key_id, keys, now)
        return Principal(row.id, row.name, row.scope)

    async def _row(self, key_id: str, keys: ApiKeys) -> StoredKey | None:
        cached = self._rows.get(key_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        row = await keys.find(key_id)
        if row is None:
            self._rows.pop(key_id, None)
        elif self._ttl > 0:
            self._rows[key_id] = (self._clock() + self._ttl, row)
        return row

    async def _touch(self, key_id: str, keys: ApiKeys, now: datetime) -> None:
        last = self._touched.get(key_id)
        if last is not None and self._clock() - last < TOUCH_EVERY.total_seconds():
            return
        self._touched[key_id] = self._clock()
        await keys.touch(key_id, now=now)
