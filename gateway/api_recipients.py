"""HTTP routes for users, their endpoints, opt-outs and the bulk import of users.

``/v1/users:import`` and ``/v1/users/{user_id}`` cannot shadow each other: the first is a whole
path segment ``users:import``, the second needs a segment after ``users/``.
"""

from __future__ import annotations

import tempfile
from typing import IO, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.addresses import opt_out_key
from gateway.api import ApiError, json_response, requires
from gateway.api_support import invalid, pool_of, read_json, validated
from gateway.errors import MessageFailed
from gateway.importer import ImportFailed, import_users, read_upload
from gateway.keys import Scope
from gateway.optouts import Cursor, OptOutRequest, OptOuts
from gateway.recipients import InvalidUser, Recipients, User, UserPatch
from gateway.rules import CHANNELS

__all__ = ["MAX_UPLOAD_BYTES", "recipient_routes"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# An upload is spooled to a temporary file (in memory up to 8 MiB) before it is imported; the
# request size limit of the JSON routes does not apply to it, this one does.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
_SPOOL_BYTES = 8 * 1024 * 1024
_RAW_TYPES = ("text/csv", "application/x-ndjson", "application/jsonl")


def recipient_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.post("/v1/users:import", post_import),
        web.put("/v1/users/{user_id}", put_user),
        web.get("/v1/users/{user_id}", get_user),
        web.patch("/v1/users/{user_id}", patch_user),
        web.delete("/v1/users/{user_id}", delete_user),
        web.get("/v1/opt-outs", list_opt_outs),
        # ``.+``: an address may hold a slash, which a client then sends as %2F.
        web.put("/v1/opt-outs/{channel}/{address:.+}", put_opt_out),
        web.get("/v1/opt-outs/{channel}/{address:.+}", get_opt_out),
        web.delete("/v1/opt-outs/{channel}/{address:.+}", delete_opt_out),
    ]


# -- users -------------------------------------------------------------------------------------


@requires(Scope.admin)
async def put_user(request: web.Request) -> web.Response:
    """Create or replace a user, its whole endpoint set included; 201 created, 200 replaced."""
    user_id = request.match_info["user_id"]
    data = await read_json(request)
    user = validated(User, _with_path_id(data, user_id))
    inserted, _ = await Recipients(pool=pool_of(request)).upsert([user])
    return json_response(await _user_or_404(request, user_id), status=201 if inserted else 200)


@requires(Scope.read)
async def get_user(request: web.Request) -> web.Response:
    """The user with its endpoints."""
    return json_response(await _user_or_404(request, request.match_info["user_id"]))


@requires(Scope.admin)
async def patch_user(request: web.Request) -> web.Response:
    """Merge attributes, replace timezone/locale when given, add or update endpoints."""
    user_id = request.match_info["user_id"]
    patch = validated(UserPatch, _with_path_id(await read_json(request), user_id))
    try:
        user = await Recipients(pool=pool_of(request)).patch(user_id, patch)
    except InvalidUser as exc:
        raise invalid(str(exc)) from None
    if user is None:
        raise _no_user()
    return json_response(user)


@requires(Scope.admin)
async def delete_user(request: web.Request) -> web.Response:
    """Remove the user and its endpoints; 204."""
    if not await Recipients(pool=pool_of(request)).delete(request.match_info["user_id"]):
        raise _no_user()
    return web.Response(status=204)


def _with_path_id(data: Any, user_id: str) -> Any:
    """The body with the path's id; a body naming another id is refused."""
    if not isinstance(data, dict):
        return data  # the model says "should be a valid dictionary"
    if "id" not in data:
        return {**data, "id": user_id}
    if data["id"] is not None and data["id"] != user_id:
        raise invalid("id: does not match the user id in the path")
    return data  # a null id is for the model to judge: a PATCH may say null, a PUT may not


async def _user_or_404(request: web.Request, user_id: str) -> dict[str, Any]:
    user = await Recipients(pool=pool_of(request)).get(user_id)
    if user is None:
        raise _no_user()
    return user


def _no_user() -> ApiError:
    return ApiError(404, "not_found", "no user with this id")


# -- opt-outs ----------------------------------------------------------------------------------


@requires(Scope.admin)
async def put_opt_out(request: web.Request) -> web.Response:
    """Opt an address out; 201 new, 200 when it already was (the first entry stands)."""
    channel, address = _opt_out_key(request)
    data = await read_json(request, optional=True)
    # ``is None``, not ``or``: a body of false or [] is not an empty body.
    body = validated(OptOutRequest, {} if data is None else data)
    entry, created = await OptOuts(pool=pool_of(request)).add(channel, address, body.source)
    return json_response(entry, status=201 if created else 200)


@requires(Scope.read)
async def get_opt_out(request: web.Request) -> web.Response:
    """The opt-out entry; 404 when the address is not opted out."""
    channel, address = _opt_out_key(request)
    entry = await OptOuts(pool=pool_of(request)).get(channel, address)
    if entry is None:
        raise _not_opted_out()
    return json_response(entry)


@requires(Scope.admin)
async def delete_opt_out(request: web.Request) -> web.Response:
    """Opt an address back in; 204, or 404 when it was not opted out."""
    channel, address = _opt_out_key(request)
    if not await OptOuts(pool=pool_of(request)).remove(channel, address):
        raise _not_opted_out()
    return web.Response(status=204)


@requires(Scope.read)
async def list_opt_outs(request: web.Request) -> web.Response:
    """A page of opt-outs in (created_at, channel, address) order, with the next cursor."""
    query = request.query
    channel = query.get("channel") or None
    if channel is not None:
        _check_channel(channel)
    limit = _limit(query.get("limit"))
    after = None
    if query.get("cursor"):
        try:
            after = Cursor.decode(query["cursor"])
        except ValueError as exc:
            raise invalid(f"cursor: {exc}") from None
    items, next_cursor = await OptOuts(pool=pool_of(request)).page(
        channel=channel, limit=limit, after=after
    )
    return json_response(
        {"items": items, "next_cursor": next_cursor.encode() if next_cursor else None}
    )


def _opt_out_key(request: web.Request) -> tuple[str, str]:
    """The channel and the normalised address from the path (aiohttp has decoded %2B to +)."""
    channel = _check_channel(request.match_info["channel"])
    try:
        return channel, opt_out_key(channel, request.match_info["address"])
    except MessageFailed as exc:
        raise invalid(f"address: {exc.reason}") from None


def _check_channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise invalid(f"channel: must be one of {', '.join(CHANNELS)}, got {channel!r}")
    return channel


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PAGE
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise invalid(f"limit: must be an integer from 1 to {MAX_PAGE}, got {text!r}")
    return int(text)


def _not_opted_out() -> ApiError:
    return ApiError(404, "not_found", "this address is not opted out on this channel")


# -- bulk import -------------------------------------------------------------------------------


@requires(Scope.admin)
async def post_import(request: web.Request) -> web.Response:
    """Import users from a CSV or JSON-lines upload (multipart field ``file`` or a raw body)."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        await _receive_upload(request, spool)
        spool.seek(0)
        try:
            rows = read_upload(spool)
            summary = await import_users(rows, recipients=Recipients(pool=pool_of(request)))
        except ImportFailed as exc:
            raise invalid(f"file: {exc}") from None
    return json_response(summary.to_json())


async def _receive_upload(request: web.Request, spool: IO[bytes]) -> None:
    """Copy the upload into ``spool``, streaming, within :data:`MAX_UPLOAD_BYTES`."""
    if request.content_type == "multipart/form-data":
        try:
            await _receive_file_part(request, spool)
        except (ValueError, HttpProcessingError) as exc:
            # aiohttp's words for a missing boundary or a broken part header, on one line.
            reason = " ".join(str(getattr(exc, "message", exc)).split())
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {reason}") from None
        return
    if request.content_type not in _RAW_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with a 'file' part, or a text/csv or"
            " application/x-ndjson body",
        )
    async for chunk in request.content.iter_chunked(64 * 1024):
        _write_limited(spool, chunk)


async def _receive_file_part(request: web.Request, spool: IO[bytes]) -> None:
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "file":
            while chunk := await part.read_chunk():
                _write_limited(spool, chunk)
            return
    raise invalid("file: the multipart body has no part named 'file'")


def _write_limited(spool: IO[bytes], chunk: bytes) -> None:
    if spool.tell() + len(chunk) > MAX_UPLOAD_BYTES:
        raise ApiError(
            413, "payload_too_large", f"an import may be at most {MAX_UPLOAD_BYTES} bytes"
        )
    spool.write(chunk)
