"""Push to Apple devices through the APNs HTTP/2 provider API, with token (JWT) authentication.

Every request is a stream on one long-lived HTTP/2 connection (Apple asks providers to keep
their connections open rather than open one per push), driven by the lean client of
:mod:`adapters.h2client`. ``https://`` URLs negotiate HTTP/2 by ALPN; ``http://`` URLs (local
fakes) speak HTTP/2 cleartext with prior knowledge. APNs caps the streams per connection
(SETTINGS_MAX_CONCURRENT_STREAMS); pushes over the cap wait for a free stream.

The provider token is an ES256 JWT ``{alg, kid} {iss: team id, iat}``. Apple rejects one whose
``iat`` is over an hour old and throttles one renewed more often than every 20 minutes, so it is
renewed every 50 minutes, and at once when APNs answers ``403 ExpiredProviderToken`` (that
request is then retried once).

How APNs answers map onto our errors (``reason`` is the ``{"reason": ...}`` of the body):

- 410 ``Unregistered`` / ``ExpiredToken``, 400 ``BadDeviceToken``: :class:`InvalidTokenError`,
  so the endpoint is deactivated;
- 429, 500, 503 (any 5xx), 400 ``IdleTimeout``, a timeout, a refused or dropped connection,
  a GOAWAY before the push was answered: :class:`TransientSendError`, with ``Retry-After``
  when APNs gives one;
- 403 ``ExpiredProviderToken``: renew the token and retry once;
- 403 ``InvalidProviderToken``/``MissingProviderToken``, 400 ``BadTopic``/``TopicDisallowed``/
  ``DeviceTokenNotForTopic``/``BadPriority``/..., 413 and anything else:
  :class:`PermanentSendError`, saying what to fix when it is our configuration.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from adapters.base import OutboundPush, SendResult
from adapters.errors import InvalidTokenError, PermanentSendError, SendError, TransientSendError
from adapters.h2client import H2Client, H2Error, H2Response, H2TimeoutError
from adapters.http import parse_retry_after
from adapters.jwt import load_es256_key, sign_es256

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
# Apple: renew no more than once every 20 minutes and no less than once every 60.
TOKEN_LIFETIME_SECONDS = 50 * 60
# Never valid in an HTTP/2 field value (RFC 9113 §8.2.1); the collapse id is the one header
# whose value a job chooses freely.
_FORBIDDEN_IN_HEADERS = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApnsConfig:
    """Where APNs is and how to sign in. ``key_pem`` is the contents of the ``.p8`` key file."""

    base_url: str = PRODUCTION_URL
    key_pem: bytes
    key_id: str
    team_id: str
    topic: str  # the app's bundle id
    ca_file: str | None = None  # a CA bundle to trust instead of the system's (a local server)
    timeout: float = 10.0
    max_concurrency: int = 200  # requests in flight at once, all on the one connection


def load_apns_config(
    key_pem: bytes,
    *,
    key_id: str | None,
    team_id: str | None,
    topic: str | None,
    base_url: str = PRODUCTION_URL,
    ca_file: str | None = None,
    timeout: float = 10.0,
    max_concurrency: int = 200,
) -> ApnsConfig:
    """An :class:`ApnsConfig` from the ``.p8`` file's contents; ``ValueError`` says what's wrong."""
    if not key_id or not team_id or not topic:
        named = (("key id", key_id), ("team id", team_id), ("topic", topic))
        raise ValueError(f"APNs {', '.join(n for n, v in named if not v)} not set")
    try:
        load_es256_key(key_pem)
    except ValueError as exc:
        raise ValueError(f"APNs key: {exc}") from None
    return ApnsConfig(base_url=base_url, key_pem=key_pem, key_id=key_id, team_id=team_id,
                      topic=topic, ca_file=ca_file, timeout=timeout,
                      max_concurrency=max_concurrency)


def build_payload(message: OutboundPush) -> bytes:
    """The JSON body: ``aps`` plus the message's data keys at the top level, at most 4 KiB."""
    if message.silent:
        aps: dict[str, Any] = {"content-available": 1}
    else:
        alert = {k: v for k, v in (("title", message.title), ("body", message.body)) if v}
        if not alert:
            raise PermanentSendError("an alert push needs a title or a body")
        aps = {"alert": alert}
    data = message.data or {}
    if "aps" in data:
        raise PermanentSendError("push data may not use the key 'aps', which APNs reserves")
    try:
        payload = orjson.dumps({"aps": aps, **data})
    except TypeError as exc:  # orjson.JSONEncodeError
        raise PermanentSendError(f"push data is not JSON: {exc}") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PermanentSendError(
            f"APNs payload is {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    return payload


def build_headers(message: OutboundPush, *, topic: str, now: float) -> dict[str, str]:
    """The ``apns-*`` request headers; background pushes must go at priority 5."""
    headers = {
        "apns-topic": topic,
        "apns-push-type": "background" if message.silent else "alert",
        "apns-priority": "5" if message.silent else "10",
    }
    if message.expires_at is not None:
        headers["apns-expiration"] = str(_unix_expiry(message.expires_at, now))
    if message.collapse_id is not None:
        if len(message.collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise PermanentSendError(f"collapse id over {MAX_COLLAPSE_ID_BYTES} bytes")
        if _FORBIDDEN_IN_HEADERS.search(message.collapse_id):
            raise PermanentSendError("collapse id contains CR, LF or NUL")
        # Nor may a value start or end with whitespace; h2 used to strip it, so do we.
        headers["apns-collapse-id"] = message.collapse_id.strip(" \t")
    try:
        # APNs echoes a canonical UUID back as apns-id; anything else it would refuse.
        headers["apns-id"] = str(uuid.UUID(message.message_id))
    except ValueError:
        pass
    return headers


def _unix_expiry(expires_at: datetime, now: float) -> int:
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    expiry = int(expires_at.timestamp())
    # 0 would mean "try once, do not store", the opposite of "already too late".
    if expiry <= now:
        raise PermanentSendError(f"push expired at {expires_at.isoformat()} before it was sent")
    return expiry


# Answers that mean our configuration is wrong, with what ops should check.
_KEY_HINT = "check GATEWAY_APNS_KEY_ID, GATEWAY_APNS_TEAM_ID and the .p8 key GATEWAY_APNS_KEY_FILE"
_CONFIGURATION_HINTS: Mapping[str, str] = {
    "InvalidProviderToken": f"APNs rejected the provider token: {_KEY_HINT}",
    "MissingProviderToken": f"APNs got no provider token: {_KEY_HINT}",
    "ExpiredProviderToken": "APNs says a fresh provider token is expired: check this host's clock",
    "BadTopic": "APNs rejected the topic: set GATEWAY_APNS_TOPIC to the app's bundle id",
    "MissingTopic": "APNs got no topic: set GATEWAY_APNS_TOPIC to the app's bundle id",
    "TopicDisallowed": "APNs does not allow this topic: check GATEWAY_APNS_TOPIC",
    "DeviceTokenNotForTopic": "the device token is for another app than GATEWAY_APNS_TOPIC",
    "BadCertificate": f"APNs rejected our credentials: {_KEY_HINT}",
    "BadCertificateEnvironment": "wrong APNs environment: check GATEWAY_APNS_BASE_URL",
    "Forbidden": f"APNs refused the request: {_KEY_HINT}",
}
_INVALID_TOKEN_REASONS = frozenset({"Unregistered", "ExpiredToken", "BadDeviceToken"})
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def classify(status: int, headers: Mapping[str, str], body: bytes) -> SendError:
    """Translate a refusal from APNs (status, lower-case headers, body) into our error, in this
    one place."""
    reason = _reason(body)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 410 or reason in _INVALID_TOKEN_REASONS:
        return InvalidTokenError(_invalid_token_text(reason, status, body))
    if status in _TRANSIENT_STATUSES or status >= 500 or reason == "IdleTimeout":
        return TransientSendError(f"APNs {status} {reason}", retry_after=retry_after)
    if reason in _CONFIGURATION_HINTS:
        return PermanentSendError(f"APNs {status} {reason}: {_CONFIGURATION_HINTS[reason]}")
    if status == 413:
        return PermanentSendError(f"APNs 413 {reason}: payload over {MAX_PAYLOAD_BYTES} bytes")
    return PermanentSendError(f"APNs {status} {reason}")


def _reason(body: bytes) -> str:
    try:
        error = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "(no reason given)"
    reason = error.get("reason") if isinstance(error, dict) else None
    return str(reason) if reason else "(no reason given)"


def _invalid_token_text(reason: str, status: int, body: bytes) -> str:
    if reason == "BadDeviceToken":
        # Apple's advice: a sandbox token sent to production (or the reverse) looks the same.
        return (f"APNs {status} BadDeviceToken (a token of the other environment "
                "gives this too: check GATEWAY_APNS_BASE_URL)")
    text = f"APNs {status} {reason}"
    try:
        stamp = float(orjson.loads(body)["timestamp"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return text
    # Apple documents milliseconds; accept seconds too.
    seconds = stamp / 1000 if stamp > 1e11 else stamp
    since = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")
    return f"{text} (token inactive since {since})"


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


class ApnsSender:
    """Sends :class:`OutboundPush` to APNs, up to ``max_concurrency`` streams at once."""

    channel = "push"
    platform = "apns"

    def __init__(self, config: ApnsConfig, *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` gives unix time: the token's ``iat`` and when to renew it."""
        self._config = config
        self._clock = clock
        self._key = load_es256_key(config.key_pem)
        self._token: str | None = None
        self._token_iat = 0.0
        self._slots = asyncio.Semaphore(config.max_concurrency)
        # One connection, kept open between bursts, as Apple asks.
        self._client = H2Client(config.base_url, ssl_context=_ssl_context(config.ca_file),
                                connect_timeout=config.timeout)

    async def send(self, message: OutboundPush) -> SendResult:
        """Send one push; raise a :class:`~adapters.errors.SendError` subclass if refused."""
        payload = build_payload(message)
        headers = build_headers(message, topic=self._config.topic, now=self._clock())
        path = f"/3/device/{quote(message.to, safe='')}"
        async with self._slots:
            token = self._provider_token()
            response = await self._post(path, payload, headers, token)
            if response.status == 403 and _reason(response.body) == "ExpiredProviderToken":
                response = await self._post(path, payload, headers, self._renew(token))
        if response.status != 200:
            raise classify(response.status, response.headers, response.body)
        return SendResult(provider_message_id=response.headers.get("apns-id"))

    async def _post(self, path: str, payload: bytes, headers: dict[str, str],
                    token: str) -> H2Response:
        headers["authorization"] = f"bearer {token}"
        try:
            return await self._client.request("POST", path, headers.items(), payload,
                                              timeout=self._config.timeout)
        except H2TimeoutError as exc:
            raise TransientSendError(f"APNs timed out: {exc}") from None
        except H2Error as exc:
            raise TransientSendError(f"APNs connection problem: {exc}") from None

    def _provider_token(self) -> str:
        if self._token is None or self._clock() - self._token_iat >= TOKEN_LIFETIME_SECONDS:
            return self._mint()
        return self._token

    def _renew(self, stale: str) -> str:
        # Many streams can come back ExpiredProviderToken at once; only the first renews.
        if self._token is not None and self._token != stale:
            return self._token
        return self._mint()

    def _mint(self) -> str:
        self._token_iat = self._clock()
        claims = {"iss": self._config.team_id, "iat": int(self._token_iat)}
        self._token = sign_es256(self._key, claims, kid=self._config.key_id)
        return self._token

    async def close(self) -> None:
        """Close the HTTP/2 connection: pushes still in flight fail as transient, then GOAWAY."""
        await self._client.close()
