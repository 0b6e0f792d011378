"""Stored message templates: the body model, its syntax check, and their SQL.

A template is a name and its versions, numbered from 1. A version never changes once written: a
``PUT`` with a new body adds the next version, one with the latest body adds nothing. Deleting
is soft: the name no longer resolves to a latest version, but a job or preview pinned to a
version still loads it, and a later ``PUT`` restores the name with a new version. Because
versions are immutable, a process may keep them in a :class:`TemplateCache` for good; only
"which version is the latest" has to be asked again.

A body holds per-channel parts (``email``, ``sms``, ``push``), the same per locale under
``locales``, and the ``defaults`` of its variables. How a body is rendered for a message is in
:mod:`gateway.template_render`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Iterator, Union

import asyncpg
import jinja2
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.recipients import normalise_locale
from gateway.render import Renderer, describe_error

__all__ = [
    "CHANNELS",
    "ChannelParts",
    "EmailParts",
    "Parts",
    "PushParts",
    "SmsParts",
    "TemplateBody",
    "TemplateCache",
    "TemplateKey",
    "TemplateVersion",
    "Templates",
    "check_syntax",
    "load_many",
    "not_found_reason",
    "valid_name",
]

CHANNELS = ("email", "sms", "push")
NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

# (name, version); version None means "the latest version of a name that is not deleted".
TemplateKey = tuple[str, Union[int, None]]


def valid_name(name: str) -> bool:
    """Whether ``name`` is a template name: 1-200 ASCII letters, digits, ``.``, ``_``, ``-``."""
    return NAME.fullmatch(name) is not None


class _Model(BaseModel):
    # strict: a number is not a string, and a body read back from the database parses the same.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EmailParts(_Model):
    """An email: a subject and at least one of ``html`` and ``text`` (text is derived from
    the HTML when absent)."""

    subject: str
    html: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _some_body(self) -> "EmailParts":
        if self.html is None and self.text is None:
            raise ValueError("email needs html or text")
        return self


class SmsParts(_Model):
    """An SMS text."""

    body: Annotated[str, Field(min_length=1)]


class PushParts(_Model):
    """A push notification; every part optional, ``data`` values are templates too."""

    title: str | None = None
    body: str | None = None
    data: dict[str, str] | None = None
    silent: bool | None = None


Parts = Union[EmailParts, SmsParts, PushParts]


class ChannelParts(_Model):
    """The parts of each channel a template (or one of its locales) has."""

    email: EmailParts | None = None
    sms: SmsParts | None = None
    push: PushParts | None = None

    def for_channel(self, channel: str) -> Parts | None:
        """The parts for ``channel`` (``email``, ``sms`` or ``push``), ``None`` if absent."""
        parts: Parts | None = getattr(self, channel) if channel in CHANNELS else None
        return parts


class TemplateBody(ChannelParts):
    """The body of ``PUT /v1/templates/{name}``, and of every stored version."""

    locales: dict[str, ChannelParts] = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)

    @field_validator("locales")
    @classmethod
    def _locale_tags(cls, value: dict[str, ChannelParts]) -> dict[str, ChannelParts]:
        normal: dict[str, ChannelParts] = {}
        for tag, parts in value.items():
            key = normalise_locale(tag)  # ValueError names the tag
            if key in normal:
                raise ValueError(f"locale {tag!r} is given twice (as {key})")
            normal[key] = parts
        return normal

    @model_validator(mode="after")
    def _some_channel(self) -> "TemplateBody":
        every = [self, *self.locales.values()]
        if not any(p.for_channel(c) is not None for p in every for c in CHANNELS):
            raise ValueError("a template needs at least one of email, sms and push")
        return self

    def to_json(self) -> dict[str, Any]:
        """The normal form stored and answered: nulls and empty ``locales``/``defaults`` left
        out, locale tags normalised (``pt_br`` → ``pt-BR``)."""
        data = self.model_dump(mode="json", exclude_none=True)
        for key in ("locales", "defaults"):
            if not data.get(key):
                data.pop(key, None)
        return data

    def sources(self) -> Iterator[tuple[str, str, bool]]:
        """Every Jinja string: ``(path, source, is_html)``, e.g. ``("email.html", "...", True)``."""
        yield from _sources("", self)
        for tag, parts in self.locales.items():
            yield from _sources(f"locales.{tag}.", parts)


def _sources(prefix: str, parts: ChannelParts) -> Iterator[tuple[str, str, bool]]:
    if parts.email is not None:
        yield f"{prefix}email.subject", parts.email.subject, False
        for field in ("html", "text"):
            source = getattr(parts.email, field)
            if source is not None:
                yield f"{prefix}email.{field}", source, field == "html"
    if parts.sms is not None:
        yield f"{prefix}sms.body", parts.sms.body, False
    if parts.push is not None:
        for field in ("title", "body"):
            source = getattr(parts.push, field)
            if source is not None:
                yield f"{prefix}push.{field}", source, False
        for key, source in (parts.push.data or {}).items():
            yield f"{prefix}push.data.{key}", source, False


def check_syntax(body: TemplateBody, renderer: Renderer) -> None:
    """Compile every Jinja string of ``body`` in the environment it renders in; raise
    ``ValueError("email.html line 3: unexpected '}'")`` at the first that does not compile."""
    for path, source, is_html in body.sources():
        try:
            renderer.compile(source, is_html=is_html)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"{path} {describe_error(exc)}") from None


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One immutable version of a template."""

    name: str
    version: int
    body: TemplateBody
    created_at: datetime

    @property
    def key(self) -> tuple[str, int]:
        """``(name, version)``."""
        return self.name, self.version

    def to_json(self) -> dict[str, Any]:
        """The answer of ``GET /v1/templates/{name}``."""
        return {
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "body": self.body.to_json(),
        }


def _version(name: str, version: int, body_json: str, created_at: datetime) -> TemplateVersion:
    # Parsed as the API parsed the body it stored (orjson): jsonb writes a float such as 5e27
    # out in full, which pydantic's JSON parser would read back as an integer too large for
    # orjson to answer.
    body = TemplateBody.model_validate(orjson.loads(body_json))
    return TemplateVersion(name=name, version=version, body=body, created_at=created_at)


class TemplateCache:
    """Template versions already read, by ``(name, version)``; at most ``max_versions``, the
    least recently used dropped first. Versions never change, so an entry is never stale.
    One per process, built by the entry point and passed to :func:`load_many`."""

    def __init__(self, *, max_versions: int = 1024) -> None:
        self._entries: OrderedDict[tuple[str, int], TemplateVersion] = OrderedDict()
        self._max = max_versions

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, version: int) -> TemplateVersion | None:
        """The cached version, or ``None``."""
        found = self._entries.get((name, version))
        if found is not None:
            self._entries.move_to_end((name, version))
        return found

    def put(self, template: TemplateVersion) -> None:
        """Keep ``template``, dropping the least recently used entry when full."""
        self._entries[template.key] = template
        self._entries.move_to_end(template.key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


# One row per version found. A deleted template's versions stay readable: a job pinned to one
# still renders (only the name stops resolving to a latest version, which the claim reads).
_LOAD_MANY = """
SELECT v.name, v.version, v.body::text AS body, v.created_at
FROM unnest($1::text[], $2::integer[]) AS w(name, version)
JOIN template_versions AS v ON v.name = w.name AND v.version = w.version
"""


async def load_many(
    pool: asyncpg.Pool, versions: set[tuple[str, int]], *, cache: TemplateCache | None = None
) -> dict[tuple[str, int], TemplateVersion]:
    """Each of ``versions`` that exists, in one query at most: those already in ``cache`` are
    not asked for. Which version is a name's latest is not asked here: the pipeline's claim
    reads it. A version left out of the answer does not exist."""
    found: dict[tuple[str, int], TemplateVersion] = {}
    wanted: list[tuple[str, int]] = []
    for name, version in versions:
        cached = cache.get(name, version) if cache is not None else None
        if cached is not None:
            found[(name, version)] = cached
        else:
            wanted.append((name, version))
    if not wanted:
        return found
    rows = await pool.fetch(
        _LOAD_MANY, [name for name, _ in wanted], [version for _, version in wanted]
    )
    for row in rows:
        template = _version(row["name"], row["version"], row["body"], row["created_at"])
        if cache is not None:
            cache.put(template)
        found[template.key] = template
    return found


def not_found_reason(key: TemplateKey) -> str:
    """The reason a message fails when its template is not found: a name with no latest
    version (never stored, or deleted), or a version that does not exist."""
    name, version = key
    if version is None:
        return f"unknown template {name!r}"
    return f"template {name!r} has no version {version}"


_PUT_LOCK = """
INSERT INTO templates AS t (name, latest) VALUES ($1, 0)
ON CONFLICT (name) DO UPDATE SET name = t.name
RETURNING t.latest, t.deleted_at
"""
_GET = """
SELECT v.version, v.body::text AS body, v.created_at
FROM templates AS t
JOIN template_versions AS v ON v.name = t.name AND v.version = coalesce($2::integer, t.latest)
WHERE t.name = $1 AND ($2::integer IS NOT NULL OR t.deleted_at IS NULL)
"""


class Templates:
    """Templates over an asyncpg pool built by the caller."""

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, name: str, body: TemplateBody) -> tuple[TemplateVersion, bool]:
        """Store ``body`` as the next version unless it equals the latest; ``(version, created)``.
        A deleted name is restored with a new version whatever its body."""
        body_json = orjson.dumps(body.to_json()).decode()
        async with self._pool.acquire() as conn, conn.transaction():
            # The upsert locks the name's row: concurrent PUTs of one name number in turn.
            lock = await conn.fetchrow(_PUT_LOCK, name)
            latest: int = lock["latest"]
            if latest and lock["deleted_at"] is None:
                row = await conn.fetchrow(
                    "SELECT body::text AS body, created_at, body = $3::jsonb AS same"
                    " FROM template_versions WHERE name = $1 AND version = $2",
                    name,
                    latest,
                    body_json,
                )
                if row["same"]:
                    # jsonb equality: key order and spacing do not make a new version.
                    return _version(name, latest, row["body"], row["created_at"]), False
            created_at = await conn.fetchval(
                "INSERT INTO template_versions (name, version, body) VALUES ($1, $2, $3::jsonb)"
                " RETURNING created_at",
                name,
                latest + 1,
                body_json,
            )
            await conn.execute(
                "UPDATE templates SET latest = $2, deleted_at = NULL, updated_at = $3"
                " WHERE name = $1",
                name,
                latest + 1,
                created_at,
            )
        return TemplateVersion(name, latest + 1, body, created_at), True

    async def get(self, name: str, version: int | None = None) -> TemplateVersion | None:
        """Version ``version`` (deleted names included), or the latest of a name that is not
        deleted; ``None`` when there is no such version."""
        row = await self._pool.fetchrow(_GET, name, version)
        if row is None:
            return None
        return _version(name, row["version"], row["body"], row["created_at"])

    async def names(self) -> list[dict[str, Any]]:
        """Every template that is not deleted, by name: ``name``, ``version`` (the latest),
        ``updated_at``."""
        rows = await self._pool.fetch(
            "SELECT name, latest AS version, updated_at FROM templates"
            " WHERE deleted_at IS NULL AND latest > 0 ORDER BY name"
        )
        return [dict(r) for r in rows]

    async def delete(self, name: str) -> bool:
        """Soft-delete the name; whether it existed and was not deleted already."""
        found = await self._pool.fetchval(
            "UPDATE templates SET deleted_at = now(), updated_at = now()"
            " WHERE name = $1 AND deleted_at IS NULL RETURNING true",
            name,
        )
        return bool(found)
