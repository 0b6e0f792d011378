"""What the resource routes share: reading a JSON body, validating input, reaching the database.

Every failure becomes an :class:`~gateway.api.ApiError`: 400 ``invalid_json`` for a body that is
not JSON, 422 ``invalid_request`` naming the field for one that breaks the model.
"""

from __future__ import annotations

from typing import Any, TypeVar

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.api import STORE, ApiError
from gateway.jobs import describe

__all__ = ["invalid", "pool_of", "read_json", "validated"]

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The request body parsed as JSON; ``None`` for an empty body when ``optional``."""
    body = await request.read()
    if not body.strip():
        if optional:
            return None
        raise ApiError(400, "invalid_json", "invalid JSON: the body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"invalid JSON: {exc}") from None


def validated(model: type[M], data: Any) -> M:
    """``data`` as ``model``; 422 with one ``field: problem`` per error otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(describe(exc)) from None


def invalid(message: str) -> ApiError:
    """The 422 answer for input that breaks a rule; ``message`` starts with the field name."""
    return ApiError(422, "invalid_request", message)


def pool_of(request: web.Request) -> asyncpg.Pool:
    """The application's database pool, the one its :class:`~gateway.store.Store` uses."""
    # The Store owns the pool the app was built with; there is no public accessor yet, and a
    # second pool per process would double the connections for nothing.
    pool: asyncpg.Pool = request.app[STORE].pool
    return pool
