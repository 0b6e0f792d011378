"""The one-click unsubscribe endpoint (RFC 8058): the only ``/v1`` routes without a bearer token.

The signed token in the path is the authorisation. A ``POST`` (what a mailbox provider sends,
body ``List-Unsubscribe=One-Click``) opts the address out at once, with no redirect or further
step. A ``GET`` (a person following the link) only shows a page with a button that makes that
``POST``: link scanners and previews fetch links, and must not unsubscribe anyone.

The token is checked before the body is read, so a forged link is answered 403 without
reading anything. The body is then read within ``GATEWAY_MAX_REQUEST_BYTES`` (413 beyond) and
must carry the one-click field RFC 8058 requires (400 without): a ``POST`` without it is not a
mailbox provider's one click, and opts nobody out.
"""

from __future__ import annotations

import html
import urllib.parse

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.addresses import opt_out_key
from gateway.api import SETTINGS, ApiError
from gateway.api_support import pool_of
from gateway.errors import MessageFailed
from gateway.optouts import OptOuts
from gateway.unsubscribe import ONE_CLICK, verify_token

__all__ = ["UNSUBSCRIBE_PREFIX", "unsubscribe_routes"]

log = structlog.get_logger("gateway.unsubscribe")

# One of gateway.api.SIGNED_PREFIXES: bearer_auth lets it through.
UNSUBSCRIBE_PREFIX = "/v1/unsubscribe/"

# The token is in the URL: keep it out of caches, Referer headers and search engines.
_PRIVATE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>Unsubscribe</h1>
<p>Stop all email to <strong>{address}</strong>?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
</body></html>
"""


def unsubscribe_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.post(UNSUBSCRIBE_PREFIX + "{token}", post_unsubscribe),
        web.get(UNSUBSCRIBE_PREFIX + "{token}", get_unsubscribe),
    ]


async def post_unsubscribe(request: web.Request) -> web.Response:
    """Opt the token's address out of email (source ``unsubscribe``); 200, plain text. 400
    ``invalid_unsubscribe`` when the body lacks ``List-Unsubscribe=One-Click``."""
    channel, address = _verified(request)
    if not await _is_one_click(request):
        raise ApiError(
            400,
            "invalid_unsubscribe",
            f"the body must be the form {ONE_CLICK} (RFC 8058)",
            headers=_PRIVATE,  # the link in the URL is a valid one
        )
    _, created = await OptOuts(pool=pool_of(request)).add(channel, address, "unsubscribe")
    log.info("unsubscribe.opted_out", channel=channel, to=address, created=created)
    return web.Response(
        text="You are unsubscribed: no more email will be sent to this address.\n",
        content_type="text/plain",
        headers=_PRIVATE,
    )


async def get_unsubscribe(request: web.Request) -> web.Response:
    """A page with a button that POSTs the one-click body; opts nobody out by itself."""
    _, address = _verified(request)
    return web.Response(
        text=_PAGE.format(address=html.escape(address)),
        content_type="text/html",
        headers={
            **_PRIVATE,
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
            " form-action 'self'",
        },
    )


async def _is_one_click(request: web.Request) -> bool:
    """Whether the body has the field ``List-Unsubscribe=One-Click``, in a multipart form or a
    URL-encoded one (RFC 8058 allows both). aiohttp reads it within the app's
    ``client_max_size`` (``GATEWAY_MAX_REQUEST_BYTES``) and raises 413 beyond."""
    name, _, value = ONE_CLICK.partition("=")
    if request.content_type == "multipart/form-data":
        try:
            form = await request.post()
        except (ValueError, HttpProcessingError):
            return False  # no boundary, a broken part header: no field either
        return value in form.getall(name, [])
    # Any other type is read as URL-encoded: what every mailbox provider sends, and a sender
    # that forgot the header still means the one click.
    body = (await request.read()).decode("utf-8", errors="replace")
    return (name, value) in urllib.parse.parse_qsl(body, keep_blank_values=True)


def _verified(request: web.Request) -> tuple[str, str]:
    """The channel and the opt-out key of the path's token; 503 when no secret is set, 403
    for a token this gateway did not sign."""
    secret = request.app[SETTINGS].unsubscribe_secret
    if secret is None:
        raise ApiError(503, "not_configured", "GATEWAY_UNSUBSCRIBE_SECRET is needed")
    verified = verify_token(secret, request.match_info["token"])
    if verified is None:
        raise ApiError(403, "invalid_signature", "this unsubscribe link is not valid")
    channel, address = verified
    try:
        return channel, opt_out_key(channel, address)
    except MessageFailed:
        # Signed by us, so only a changed address rule gets here; still nothing to opt out.
        raise ApiError(403, "invalid_signature", "this unsubscribe link is not valid") from None
