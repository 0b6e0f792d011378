"""HTTP routes for our dedicated numbers: ``/v1/numbers`` and ``/v1/numbers/{number}``.

The number in the path is E.164; its ``+`` may be sent as is or URL-encoded (``%2B``), which
aiohttp decodes before the handler sees it. Any spelling ``normalise_phone`` accepts is stored
as E.164.
"""

from __future__ import annotations

from aiohttp import web

from gateway.addresses import normalise_phone
from gateway.api import ApiError, json_response, requires
from gateway.api_support import invalid, pool_of, read_json, validated
from gateway.errors import MessageFailed
from gateway.keys import Scope
from gateway.numbers import NumberConfig, Numbers, decode_cursor, encode_cursor

__all__ = ["number_routes"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def number_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.get("/v1/numbers", list_numbers),
        web.put("/v1/numbers/{number}", put_number),
        web.get("/v1/numbers/{number}", get_number),
        web.delete("/v1/numbers/{number}", delete_number),
    ]


@requires(Scope.admin)
async def put_number(request: web.Request) -> web.Response:
    """Register a number or replace its configuration; 201 created, 200 replaced."""
    number = _number(request)
    data = await read_json(request, optional=True)
    # ``is None``, not ``or``: a body of false or [] is not an empty body.
    config = validated(NumberConfig, {} if data is None else data)
    entry, created = await Numbers(pool=pool_of(request)).put(number, config)
    return json_response(entry, status=201 if created else 200)


@requires(Scope.read)
async def get_number(request: web.Request) -> web.Response:
    """The number's configuration; 404 when it is not registered."""
    entry = await Numbers(pool=pool_of(request)).get(_number(request))
    if entry is None:
        raise _no_number()
    return json_response(entry)


@requires(Scope.admin)
async def delete_number(request: web.Request) -> web.Response:
    """Forget the number; 204, or 404 when it was not registered. Its opt-outs stay."""
    if not await Numbers(pool=pool_of(request)).delete(_number(request)):
        raise _no_number()
    return web.Response(status=204)


@requires(Scope.read)
async def list_numbers(request: web.Request) -> web.Response:
    """A page of numbers in order, with the cursor of the next page."""
    query = request.query
    limit = _limit(query.get("limit"))
    after = None
    if query.get("cursor"):
        try:
            after = decode_cursor(query["cursor"])
        except ValueError as exc:
            raise invalid(f"cursor: {exc}") from None
    items, last = await Numbers(pool=pool_of(request)).page(limit=limit, after=after)
    return json_response({"items": items, "next_cursor": encode_cursor(last) if last else None})


def _number(request: web.Request) -> str:
    try:
        return normalise_phone(request.match_info["number"])
    except MessageFailed as exc:
        raise invalid(f"number: {exc.reason}") from None


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PAGE
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise invalid(f"limit: must be an integer from 1 to {MAX_PAGE}, got {text!r}")
    return int(text)


def _no_number() -> ApiError:
    return ApiError(404, "not_found", "no number registered under this number")
