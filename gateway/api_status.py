"""Provider status callbacks: ``POST /v1/status/twilio``.

Authenticated by the provider's signature (not the bearer token): Twilio signs the URL it
called, which we rebuild from ``GATEWAY_PUBLIC_URL``, with every posted parameter.
"""

from __future__ import annotations

import urllib.parse

import structlog
from aiohttp import web

from adapters.twilio_signature import (
    InvalidStatusCallback,
    collect_params,
    parse_status_callback,
    validate_signature,
)
from gateway.api import BROKER, SETTINGS, STORE, ApiError
from gateway.outcomes import Status, event_body, utcnow
from gateway.receipts import record_receipt

log = structlog.get_logger("gateway.api.status")

# Twilio's final statuses, as our event statuses; intermediate ones (queued, sent…) are ignored.
_TWILIO_FINAL = {"delivered": "delivered", "undelivered": "undelivered", "failed": "undelivered"}


async def twilio_status(request: web.Request) -> web.Response:
    """Verify the signature, record the receipt once, publish ``message.delivered``/``undelivered``."""
    settings = request.app[SETTINGS]
    if settings.twilio_auth_token is None or settings.public_url is None:
        raise ApiError(503, "not_configured", "GATEWAY_TWILIO_AUTH_TOKEN and GATEWAY_PUBLIC_URL are needed")
    params = collect_params(_form(await request.read()))
    url = settings.public_url.rstrip("/") + request.path_qs
    signature = request.headers.get("X-Twilio-Signature", "")
    if not validate_signature(settings.twilio_auth_token.get_secret_value(), url, params, signature):
        raise ApiError(403, "invalid_signature", "X-Twilio-Signature does not match")
    try:
        callback = parse_status_callback(params)
    except InvalidStatusCallback as exc:
        raise ApiError(400, "invalid_callback", str(exc)) from None
    status = _TWILIO_FINAL.get(callback.status)
    if status is None:
        return web.Response(status=204)
    reason = f"{callback.status}: error {callback.error_code}" if callback.error_code else None
    if status == "undelivered" and reason is None:
        reason = callback.status
    now = utcnow()
    receipt = await record_receipt(
        request.app[STORE].pool,
        provider="twilio",
        provider_message_id=callback.message_sid,
        status=status,
        reason=reason,
        at=now,
    )
    if receipt is None:
        log.warning("status.unknown_message", provider="twilio", provider_message_id=callback.message_sid)
    elif receipt.new:
        await request.app[BROKER].publish_events(
            [
                event_body(
                    message_id=receipt.message_id,
                    status=Status(status),
                    channel=receipt.channel,
                    kind=receipt.kind,
                    at=now,
                    reason=reason,
                    campaign_id=receipt.campaign_id,
                    provider_message_id=callback.message_sid,
                )
            ]
        )
    return web.Response(status=204)


def _form(body: bytes) -> list[tuple[str, str]]:
    """The posted parameters. Read by hand: ``request.post()`` raised (a 500) for a multipart
    body without a boundary, bytes that are not UTF-8 or an unknown charset."""
    try:
        return urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_callback", "the body is not a UTF-8 URL-encoded form") from None


def status_routes() -> list[web.RouteDef]:
    """The provider status callback routes."""
    return [web.post("/v1/status/twilio", twilio_status)]
