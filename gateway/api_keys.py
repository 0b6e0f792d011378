"""HTTP routes for API keys: ``/v1/keys`` and ``/v1/keys/{id}``, all of scope ``admin``.

A key's text is in the answer to ``POST`` and nowhere else, ever: the gateway keeps only its
hash (:mod:`gateway.keys`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.api import ApiError, json_response, requires
from gateway.api_support import pool_of, read_json, validated
from gateway.keys import NAME_PATTERN, ApiKeys, NameTaken, Scope
from gateway.outcomes import utcnow

__all__ = ["KeyRequest", "key_routes"]


class KeyRequest(BaseModel):
    """The body of ``POST /v1/keys``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Annotated[
        str,
        Field(
            pattern=NAME_PATTERN,
            description="1-100 letters, digits, '.', '_' or '-'; unique among active keys",
        ),
    ]
    scope: Literal["read", "send", "admin"] = Field(
        description="read ⊂ send ⊂ admin: each includes the ones before it"
    )


def key_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.post("/v1/keys", post_key),
        web.get("/v1/keys", list_keys),
        web.delete("/v1/keys/{id}", delete_key),
    ]


@requires(Scope.admin)
async def post_key(request: web.Request) -> web.Response:
    """Make a key; 201 with its text in ``key``, shown this once; 409 when the name is taken."""
    body = validated(KeyRequest, await read_json(request))
    try:
        info, key = await ApiKeys(pool=pool_of(request)).create(
            body.name, Scope(body.scope), now=utcnow()
        )
    except NameTaken:
        raise ApiError(409, "conflict", f"an active key is already named {body.name!r}") from None
    return json_response({**info.to_json(), "key": key}, status=201)


@requires(Scope.admin)
async def list_keys(request: web.Request) -> web.Response:
    """Every key, revoked ones included, oldest first; never a secret."""
    keys = await ApiKeys(pool=pool_of(request)).list()
    return json_response({"items": [k.to_json() for k in keys]})


@requires(Scope.admin)
async def delete_key(request: web.Request) -> web.Response:
    """Revoke the key; 204 (again for a revoked one), 404 for an unknown id."""
    # By id only: the CLI also takes a name, the API names a resource one way.
    keys = ApiKeys(pool=pool_of(request))
    if await keys.revoke(request.match_info["id"], now=utcnow(), by_name=False) is None:
        raise ApiError(404, "not_found", "no key with this id")
    return web.Response(status=204)
