"""The HTTP API (aiohttp). Every ``/v1`` route needs ``Authorization: Bearer <key>``.

The key is an API key (:mod:`gateway.keys`) or the bootstrap ``GATEWAY_API_TOKEN``. Each
``/v1`` handler declares the scope it needs with :func:`requires`; ``bearer_auth`` answers 401
for a missing, unknown or revoked key and 403 for a key whose scope is too small.

Errors are JSON everywhere, 404 and 405 included: ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar

import orjson
import structlog
from aiohttp import web

from adapters.base import Sender
from gateway.broker import Broker, routing_key_for
from gateway.errors import InvalidJob
from gateway.jobs import Kind, parse_job, utc_timestamp
from gateway.keys import ApiKeys, Keyring, Scope
from gateway.metrics import METRICS, Metrics, metrics_routes
from gateway.outcomes import utcnow
from gateway.pipeline import accepted_event, recipient_of
from gateway.search import message_timeline
from gateway.settings import Settings
from gateway.store import NewMessage, Store

log = structlog.get_logger("gateway.api")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
BROKER = web.AppKey("broker", Broker)  # type: ignore[type-abstract]
# The adapters by channel key (gateway.senders): inbound webhooks reply through "sms".
SENDERS: web.AppKey[Mapping[str, Sender]] = web.AppKey("senders")
KEYRING = web.AppKey("keyring", Keyring)

# Routes authenticated by a signature of their own instead of the bearer token.
SIGNED_PREFIXES = ("/v1/status/", "/v1/inbound/", "/v1/unsubscribe/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])
_SCOPE_ATTRIBUTE = "required_scope"


def requires(scope: Scope | str) -> Callable[[H], H]:
    """Declare the scope a ``/v1`` handler needs (a method works too)."""
    needed = Scope(scope)

    def declare(handler: H) -> H:
        setattr(handler, _SCOPE_ATTRIBUTE, needed)
        return handler

    return declare


def scope_of(handler: object) -> Scope | None:
    """The scope ``handler`` declared with :func:`requires`, if any."""
    scope: Scope | None = getattr(handler, _SCOPE_ATTRIBUTE, None)
    return scope


class ApiError(web.HTTPException):
    """An error answered as JSON. Raise it from any handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status
        # ``text``, not ``body``: aiohttp deprecates ``body`` on its HTTP exceptions.
        super().__init__(
            text=orjson.dumps(
                {"error": {"code": code, "message": message, "details": details}}
            ).decode(),
            content_type="application/json",
            headers=headers,
        )


def json_response(data: Any, *, status: int = 200) -> web.Response:
    # Passthrough, or orjson would write datetimes itself and never call ``_default``.
    body = orjson.dumps(data, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return web.Response(body=body, status=status, content_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_timestamp(value)
    raise TypeError(type(value).__name__)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error, aiohttp's own 404/405/413 included, in the JSON error shape."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status, "http_error"
        )
        # A 405 must keep its Allow header (RFC 9110, 15.5.6).
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        raise ApiError(exc.status, code, exc.reason, headers=allow) from None
    except Exception:
        log.exception("api.unhandled_error", path=request.path)
        raise ApiError(500, "internal_error", "internal error; see the gateway's logs") from None


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse ``/v1`` requests without a valid key (401) or with too small a scope (403).

    The key is checked before the path: an unknown ``/v1`` path is 401 without a key, 404 with
    one. Provider webhooks and one-click unsubscribe links are called by others: they carry
    their own proof (a provider signature, a signed token) and are checked by their handlers.
    """
    if not request.path.startswith("/v1/") or request.path.startswith(SIGNED_PREFIXES):
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    principal = None
    if scheme.lower() == "bearer" and token:
        keys = ApiKeys(pool=request.app[STORE].pool)
        principal = await request.app[KEYRING].verify(token, keys, now=utcnow())
    if principal is None:
        raise ApiError(401, "unauthorized", "missing, invalid or revoked bearer token")
    needed = _needed_scope(request)
    if needed is not None and not principal.scope.allows(needed):
        raise ApiError(
            403,
            "forbidden",
            f"this route needs a key with scope {needed.value}; this key's scope is"
            f" {principal.scope.value}",
        )
    return await handler(request)


def _needed_scope(request: web.Request) -> Scope | None:
    """The matched route's scope; ``None`` for no match (its handler answers 404 or 405)."""
    if request.match_info.http_exception is not None:
        return None
    # A /v1 route that forgot to declare its scope is for admins only (tests/test_api_keys.py
    # walks every route and fails on it).
    return scope_of(request.match_info.handler) or Scope.admin


@requires(Scope.send)
async def post_message(request: web.Request) -> web.Response:
    """Validate a send job, record it as accepted and publish it; 202 with its id."""
    settings, store = request.app[SETTINGS], request.app[STORE]
    body = await request.read()
    if len(body) > settings.max_job_bytes:
        raise ApiError(413, "payload_too_large", f"a job may be at most {settings.max_job_bytes} bytes")
    try:
        job = parse_job(body, max_bytes=settings.max_job_bytes)
    except InvalidJob as exc:
        if exc.reason.startswith("invalid JSON"):
            raise ApiError(400, "invalid_json", exc.reason) from None
        raise ApiError(422, "invalid_job", exc.reason) from None
    kind = (job.kind or Kind.promotional).value
    now = utcnow()
    inserted, existing = await store.accept(
        NewMessage(
            id=job.id,
            channel=job.channel.value,
            kind=kind,
            job_json=body.decode(),
            recipient=recipient_of(job),
            campaign_id=job.campaign_id,
            send_at=job.send_at,
            expires_at=job.expires_at,
        ),
        requeue_at=now + timedelta(seconds=settings.requeue_after_seconds),
        now=now,
    )
    if not inserted:
        # Idempotent by id: the first accept stands and nothing is published again.
        return json_response(
            {"id": job.id, "status": public_status(existing), "duplicate": True}, status=200
        )
    broker = request.app[BROKER]
    try:
        # The event first, so no consumer can announce an outcome before the acceptance.
        await broker.publish_events([accepted_event(job, kind, now)])
        await broker.publish_job(body, routing_key=routing_key_for(kind), message_id=job.id)
    except Exception as exc:
        # The job is durably recorded as queued: the scheduler publishes it when its claim lapses.
        log.warning("api.publish_failed", message_id=job.id, error=str(exc))
    return json_response({"id": job.id, "status": "accepted", "kind": kind}, status=202)


@requires(Scope.read)
async def get_message(request: web.Request) -> web.Response:
    """The message's current status and the timeline of its events."""
    message = await message_timeline(request.app[STORE].pool, request.match_info["id"])
    if message is None:
        raise ApiError(404, "not_found", "no message with this id")
    message["status"] = public_status(message["status"])
    return json_response(message)


def public_status(status: str | None) -> str | None:
    """``queued`` and ``processing`` are internal steps of ``accepted``."""
    return "accepted" if status in ("queued", "processing") else status


async def healthz(_request: web.Request) -> web.Response:
    """The process is up."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The database and the broker answer; 503 naming what does not."""
    checks: dict[str, str] = {}
    for name, ping in (("database", request.app[STORE].ping), ("broker", request.app[BROKER].ping)):
        try:
            await ping()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, status=200 if ready else 503)


def create_app(
    *,
    settings: Settings,
    store: Store,
    broker: Broker,
    senders: Mapping[str, Sender] | None = None,
    extra_routes: Iterable[web.AbstractRouteDef] = (),
    metrics: Metrics | None = None,
) -> web.Application:
    """The aiohttp application, from ready resources (the caller owns their lifecycle)."""
    # Imported here, not at the top: these route modules build on this one (ApiError, STORE).
    from gateway.api_inbound import inbound_routes
    from gateway.api_keys import key_routes
    from gateway.api_numbers import number_routes
    from gateway.api_policy import policy_routes
    from gateway.api_recipients import recipient_routes
    from gateway.api_reports import report_routes
    from gateway.api_search import search_routes
    from gateway.api_status import status_routes
    from gateway.api_templates import template_routes
    from gateway.api_unsubscribe import unsubscribe_routes
    from gateway.openapi import openapi_routes

    app = web.Application(
        middlewares=[errors_as_json, bearer_auth], client_max_size=settings.max_request_bytes
    )
    app[SETTINGS] = settings
    app[STORE] = store
    app[BROKER] = broker
    app[SENDERS] = senders or {}
    app[METRICS] = metrics if metrics is not None else Metrics()
    bootstrap = settings.api_token.get_secret_value() if settings.api_token else None
    app[KEYRING] = Keyring(bootstrap=bootstrap, ttl=settings.api_key_cache_seconds)
    app.add_routes(
        [
            web.post("/v1/messages", post_message),
            *search_routes(),  # GET /v1/messages: right after POST, so one resource has both
            web.get("/v1/messages/{id}", get_message),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            *metrics_routes(),
            *report_routes(),
            *openapi_routes(),
            *recipient_routes(),
            *policy_routes(),
            *status_routes(),
            *number_routes(),
            *inbound_routes(),
            *template_routes(),
            *unsubscribe_routes(),
            *key_routes(),
            *extra_routes,
        ]
    )
    return app
