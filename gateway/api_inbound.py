"""Inbound SMS webhooks: ``POST /v1/inbound/sms/{twilio,telnyx,vonage}``.

Each is authenticated by its provider's signature, not the bearer token (``/v1/inbound/`` is
one of :data:`gateway.api.SIGNED_PREFIXES`), then parsed into an
:class:`~gateway.inbound.InboundSms` and handed to :func:`gateway.inbound.receive`.

==========  ============================================  =====================================
provider    proof                                         auto-reply
==========  ============================================  =====================================
Twilio      ``X-Twilio-Signature``: HMAC-SHA1 of the URL  in the answer, as TwiML
            rebuilt from ``GATEWAY_PUBLIC_URL`` and
            every posted parameter
Telnyx      Ed25519 over ``timestamp|body``, ±300 s       sent through the SMS sender
Vonage      ``sig`` (MD5 hash or HMAC), ``timestamp``     sent through the SMS sender
            ±300 s
==========  ============================================  =====================================

Answers: 403 for a missing or wrong signature, 400 for a malformed message, 404 when the
message is not addressed to one of our numbers, 413 above :data:`MAX_WEBHOOK_BYTES`, 503 when
the provider's secret is not configured.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

import orjson
import structlog
from aiohttp import web

from adapters.base import OutboundSms
from adapters.errors import SendError
from adapters.telnyx_signature import load_public_key, refusal
from adapters.twilio_signature import collect_params, validate_signature
from adapters.vonage_signature import fresh
from adapters.vonage_signature import validate_signature as valid_vonage_signature
from gateway.addresses import normalise_phone
from gateway.api import BROKER, SENDERS, SETTINGS, ApiError, json_response
from gateway.api_support import pool_of
from gateway.errors import MessageFailed
from gateway.inbound import InboundSms, Processed, UnknownNumber, receive, sender_address
from gateway.metrics import METRICS

__all__ = ["MAX_WEBHOOK_BYTES", "inbound_routes", "twiml"]

log = structlog.get_logger("gateway.api.inbound")

# An SMS is at most 1,600 characters; a webhook far larger than that is not a provider's.
MAX_WEBHOOK_BYTES = 64 * 1024
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def inbound_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [
        web.post("/v1/inbound/sms/twilio", twilio_inbound),
        web.post("/v1/inbound/sms/telnyx", telnyx_inbound),
        web.post("/v1/inbound/sms/vonage", vonage_inbound),
    ]


def twiml(reply: str | None) -> str:
    """The TwiML answer: one ``<Message>`` with the XML-escaped reply, or ``<Response/>``."""
    if reply is None:
        return f"{_XML_DECLARATION}<Response/>"
    return f"{_XML_DECLARATION}<Response><Message>{escape(reply)}</Message></Response>"


# -- Twilio --------------------------------------------------------------------------------------


async def twilio_inbound(request: web.Request) -> web.Response:
    """Verify ``X-Twilio-Signature`` over every posted parameter; answer the reply as TwiML."""
    settings = request.app[SETTINGS]
    if settings.twilio_auth_token is None or settings.public_url is None:
        raise _not_configured("GATEWAY_TWILIO_AUTH_TOKEN and GATEWAY_PUBLIC_URL")
    params = collect_params(_form(await _read_body(request)))
    url = settings.public_url.rstrip("/") + request.path_qs
    # Repeated identical values are signed once, as twilio-python's validator does: we accept
    # exactly what the official validator accepts.
    distinct = {name: sorted(set(values)) for name, values in params.items()}
    signature = request.headers.get("X-Twilio-Signature", "")
    token = settings.twilio_auth_token.get_secret_value()
    if not validate_signature(token, url, distinct, signature):
        raise ApiError(403, "invalid_signature", "X-Twilio-Signature does not match")
    fields = {name: values[0] for name, values in params.items()}
    message = InboundSms(
        provider="twilio",
        provider_message_id=_required(fields, "MessageSid", "SmsSid"),
        sender=sender_address(_required(fields, "From")),
        number=_our_number(_required(fields, "To")),
        body=fields.get("Body", ""),
    )
    processed = await _receive(request, message)
    return web.Response(text=twiml(processed.reply), content_type="text/xml")


# -- Telnyx --------------------------------------------------------------------------------------


async def telnyx_inbound(request: web.Request) -> web.Response:
    """Verify the Ed25519 signature and its timestamp; reply through the SMS sender."""
    settings = request.app[SETTINGS]
    if settings.telnyx_public_key is None:
        raise _not_configured("GATEWAY_TELNYX_PUBLIC_KEY")
    body = await _read_body(request)
    problem = refusal(
        load_public_key(settings.telnyx_public_key),
        timestamp=request.headers.get("telnyx-timestamp", ""),
        body=body,
        signature=request.headers.get("telnyx-signature-ed25519", ""),
        now=time.time(),
    )
    if problem is not None:
        raise ApiError(403, "invalid_signature", problem)
    data = _object(_json(body).get("data"), "data")
    if data.get("event_type") != "message.received":
        return json_response({"status": "ignored"})
    payload = _object(data.get("payload"), "data.payload")
    recipients = payload.get("to")
    if not isinstance(recipients, list) or not recipients:
        raise _malformed("data.payload.to must be a non-empty list")
    message = InboundSms(
        provider="telnyx",
        provider_message_id=_text(payload.get("id"), "data.payload.id"),
        sender=sender_address(_phone_field(payload.get("from"), "data.payload.from")),
        number=_our_number(_phone_field(recipients[0], "data.payload.to[0]")),
        body=_optional_text(payload.get("text"), "data.payload.text"),
    )
    await _receive_and_send(request, message)
    return json_response({"status": "received"})


# -- Vonage --------------------------------------------------------------------------------------


async def vonage_inbound(request: web.Request) -> web.Response:
    """Verify ``sig`` and ``timestamp`` (form or JSON body); reply through the SMS sender."""
    settings = request.app[SETTINGS]
    if settings.vonage_signature_secret is None:
        raise _not_configured("GATEWAY_VONAGE_SIGNATURE_SECRET")
    body = await _read_body(request)
    params = _vonage_params(body, json_body=request.content_type == "application/json")
    secret = settings.vonage_signature_secret.get_secret_value()
    if "sig" not in params or not valid_vonage_signature(
        params, secret, settings.vonage_signature_method
    ):
        raise ApiError(403, "invalid_signature", "sig does not match")
    if not fresh(params.get("timestamp", ""), now=time.time()):
        raise ApiError(403, "invalid_signature", "timestamp is missing or too far from our clock")
    message = InboundSms(
        provider="vonage",
        provider_message_id=_required(params, "messageId"),
        sender=sender_address(_vonage_number(_required(params, "msisdn"))),
        number=_our_number(_vonage_number(_required(params, "to"))),
        body=params.get("text", ""),
    )
    await _receive_and_send(request, message)
    return json_response({"status": "received"})


def _vonage_params(body: bytes, *, json_body: bool) -> dict[str, str]:
    """The webhook's parameters as text, from a JSON object or a form; 400 otherwise."""
    if not json_body:
        params = collect_params(_form(body))
        if any(len(values) > 1 for values in params.values()):
            raise _malformed("a parameter is repeated")
        return {name: values[0] for name, values in params.items()}
    data = _json(body)
    if not all(isinstance(v, (str, int, float, bool)) for v in data.values()):
        raise _malformed("every value must be a string, number or boolean")
    # Signed as text: JSON true is Vonage's "true".
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in data.items()}


def _vonage_number(text: str) -> str:
    """Vonage writes international numbers without the ``+``; short codes stay as they are."""
    digits = text.strip()
    return f"+{digits}" if digits.isascii() and digits.isdigit() and len(digits) > 8 else digits


# -- shared --------------------------------------------------------------------------------------


async def _receive(request: web.Request, message: InboundSms) -> Processed:
    settings = request.app[SETTINGS]
    try:
        processed = await receive(
            message,
            pool=pool_of(request),
            broker=request.app[BROKER],
            default_from=settings.sms_from,
            max_replies_per_hour=settings.inbound_max_replies_per_hour,
        )
    except UnknownNumber:
        raise _unknown_number() from None
    if not processed.duplicate:
        request.app[METRICS].inbound.labels(message.provider, processed.action).inc()
    return processed


async def _receive_and_send(request: web.Request, message: InboundSms) -> None:
    """Process the message; send its reply, once, through the SMS sender from our number."""
    processed = await _receive(request, message)
    if processed.reply is None or processed.duplicate:
        return
    sender = request.app[SENDERS].get("sms")
    if sender is None:
        log.warning("inbound.reply_skipped", provider=message.provider,
                    reason="no SMS sender configured")
        return
    reply = OutboundSms(
        message_id=f"reply:{message.provider}:{message.provider_message_id}",
        to=message.sender,
        from_=message.number,
        body=processed.reply,
    )
    try:
        await sender.send(reply)
    except SendError as exc:
        # The message is recorded and announced; a failed courtesy reply is not worth a retry
        # that would process it again.
        log.warning("inbound.reply_failed", provider=message.provider, reason=exc.reason)


async def _read_body(request: web.Request) -> bytes:
    """The raw body, at most :data:`MAX_WEBHOOK_BYTES`; 413 beyond."""
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_WEBHOOK_BYTES:
            raise _too_large()
    return bytes(body)


def _form(body: bytes) -> list[tuple[str, str]]:
    try:
        return urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise _malformed("the form body is not UTF-8 URL-encoded text") from None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _malformed(f"invalid JSON: {exc}") from None
    return _object(data, "the body")


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"{name} must be an object")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _malformed(f"{name} must be a non-empty string")
    return value.strip()


def _optional_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"{name} must be a string")
    return value


def _phone_field(value: Any, name: str) -> str:
    return _text(_object(value, name).get("phone_number"), f"{name}.phone_number")


def _required(fields: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` that has a non-blank value; 400 naming the first otherwise."""
    for name in names:
        if fields.get(name, "").strip():
            return fields[name].strip()
    raise _malformed(f"{names[0]} is required")


def _our_number(text: str) -> str:
    """The E.164 form of the number the message was sent to; 404 when it cannot be ours."""
    try:
        return normalise_phone(text)
    except MessageFailed:
        raise _unknown_number() from None


def _malformed(message: str) -> ApiError:
    return ApiError(400, "invalid_webhook", message)


def _unknown_number() -> ApiError:
    return ApiError(404, "unknown_number", "the message is not addressed to one of our numbers")


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"a webhook may be at most {MAX_WEBHOOK_BYTES} bytes")


def _not_configured(names: str) -> ApiError:
    return ApiError(503, "not_configured", f"{names} needed for this webhook")
