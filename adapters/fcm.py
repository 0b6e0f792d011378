"""Push to Android (and Firebase-registered Apple) devices through the FCM HTTP v1 API.

Requests go over the shared :class:`~adapters.http.HttpClient`, which turns timeouts and dropped
connections into ``TransientSendError``.

Authentication is OAuth2 for a service account: an RS256 JWT ``{iss: client_email, scope,
aud: token URL, iat, exp}`` is exchanged at the token endpoint for an access token. That token
is shared by every send and fetched again 60 s before it expires, by one caller only: the
others wait for it on a lock rather than each asking Google for their own.

FCM errors are told apart by ``details[].errorCode``, not the HTTP status:

- ``UNREGISTERED``, and ``INVALID_ARGUMENT`` about the registration token:
  :class:`InvalidTokenError`, so the endpoint is deactivated;
- any other ``INVALID_ARGUMENT``: :class:`PermanentSendError`;
- ``SENDER_ID_MISMATCH``, ``THIRD_PARTY_AUTH_ERROR``: :class:`PermanentSendError` saying what
  ops should fix;
- ``QUOTA_EXCEEDED``, ``UNAVAILABLE``, ``INTERNAL`` (and any 5xx), a timeout or a dropped
  connection: :class:`TransientSendError`, with ``Retry-After`` when FCM gives one;
- 401 on a send: fetch a new access token and send once more.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from adapters.base import OutboundPush, SendResult
from adapters.errors import InvalidTokenError, PermanentSendError, SendError, TransientSendError
from adapters.http import HttpClient, HttpResponse, describe
from adapters.jwt import load_rs256_key, sign_rs256

FCM_URL = "https://fcm.googleapis.com"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_PAYLOAD_BYTES = 4096
ASSERTION_LIFETIME_SECONDS = 3600  # Google's maximum
TOKEN_EARLY_REFRESH_SECONDS = 60  # so a token never expires between fetching and using it
_CREDENTIAL_FIELDS = ("project_id", "client_email", "private_key")


@dataclass(frozen=True, slots=True, kw_only=True)
class FcmConfig:
    """Where FCM is, and the service account to send as.

    ``credentials`` holds ``project_id``, ``client_email`` and ``private_key`` of the account's
    JSON key file (see :func:`load_fcm_config`).
    """

    base_url: str = FCM_URL
    token_url: str = GOOGLE_TOKEN_URL
    credentials: Mapping[str, str]
    timeout: float = 10.0
    max_concurrency: int = 200  # sends in flight at once


def load_fcm_config(
    credentials_json: str | bytes,
    *,
    base_url: str = FCM_URL,
    token_url: str = GOOGLE_TOKEN_URL,
    timeout: float = 10.0,
    max_concurrency: int = 200,
) -> FcmConfig:
    """An :class:`FcmConfig` from the service account file's contents; ``ValueError`` if unfit."""
    try:
        account = orjson.loads(credentials_json)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"FCM credentials are not JSON: {exc}") from None
    if not isinstance(account, dict):
        raise ValueError("FCM credentials are not a JSON object")
    missing = [k for k in _CREDENTIAL_FIELDS
               if not isinstance(account.get(k), str) or not account[k]]
    if missing:
        raise ValueError(f"FCM credentials lack {', '.join(missing)} (a service account key file?)")
    try:
        load_rs256_key(account["private_key"].encode())
    except ValueError as exc:
        raise ValueError(f"FCM credentials private_key: {exc}") from None
    credentials = {k: account[k] for k in _CREDENTIAL_FIELDS}
    return FcmConfig(base_url=base_url, token_url=token_url, credentials=credentials,
                     timeout=timeout, max_concurrency=max_concurrency)


def build_message(message: OutboundPush, *, now: float) -> dict[str, Any]:
    """The request body ``{"message": {...}}``; a silent push carries data only."""
    data = _string_data(message.data or {})
    fcm: dict[str, Any] = {"token": message.to}
    if not message.silent:
        notification = {k: v for k, v in (("title", message.title), ("body", message.body)) if v}
        if not notification:
            raise PermanentSendError("an alert push needs a title or a body")
        fcm["notification"] = notification
    if data:
        fcm["data"] = data
    size = len(orjson.dumps({k: fcm[k] for k in ("notification", "data") if k in fcm}))
    if size > MAX_PAYLOAD_BYTES:
        raise PermanentSendError(
            f"FCM payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    android: dict[str, Any] = {"priority": "normal" if message.silent else "high"}
    # For Apple devices reached through FCM: the same rules as APNs (background = priority 5).
    apns_headers = {"apns-push-type": "background" if message.silent else "alert",
                    "apns-priority": "5" if message.silent else "10"}
    if message.expires_at is not None:
        expiry = _unix_expiry(message.expires_at, now)
        android["ttl"] = f"{math.ceil(expiry - now)}s"
        apns_headers["apns-expiration"] = str(int(expiry))
    if message.collapse_id is not None:
        android["collapse_key"] = message.collapse_id
        apns_headers["apns-collapse-id"] = message.collapse_id
    fcm["android"] = android
    fcm["apns"] = {"headers": apns_headers}
    if message.silent:
        fcm["apns"]["payload"] = {"aps": {"content-available": 1}}
    return {"message": fcm}


def _string_data(data: Mapping[str, Any]) -> dict[str, str]:
    # FCM takes only string values; anything else goes as its JSON text.
    try:
        return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode()
                for k, v in data.items()}
    except TypeError as exc:  # orjson.JSONEncodeError
        raise PermanentSendError(f"push data is not JSON: {exc}") from None


def _unix_expiry(expires_at: datetime, now: float) -> float:
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    expiry = expires_at.timestamp()
    if expiry <= now:
        raise PermanentSendError(f"push expired at {expires_at.isoformat()} before it was sent")
    return expiry


@dataclass(frozen=True, slots=True)
class _FcmError:
    """The parts of a ``{"error": {...}}`` body we decide on."""

    code: str  # details[].errorCode, else the status ("INVALID_ARGUMENT"), else "HTTP <n>"
    message: str
    token_problem: bool  # the error is about the registration token

    @classmethod
    def parse(cls, response: HttpResponse) -> _FcmError:
        body = response.json
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(f"HTTP {response.status}", describe(response), False)
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        codes = [d["errorCode"] for d in details if isinstance(d.get("errorCode"), str)]
        fields = [v.get("field") for d in details for v in d.get("fieldViolations") or []
                  if isinstance(v, dict)]
        message = str(error.get("message") or "")
        token_problem = "message.token" in fields or "registration token" in message.lower()
        code = codes[0] if codes else str(error.get("status") or f"HTTP {response.status}")
        return cls(code, message, token_problem)


_CREDENTIALS_HINT = "check GATEWAY_FCM_CREDENTIALS_FILE"
_CONFIGURATION_HINTS: Mapping[str, str] = {
    "SENDER_ID_MISMATCH": "the token belongs to another Firebase project than the one of "
                          "GATEWAY_FCM_CREDENTIALS_FILE",
    "THIRD_PARTY_AUTH_ERROR": "FCM could not sign in to APNs or web push: upload a valid APNs "
                              "key (or web push credentials) in the Firebase console",
    "UNAUTHENTICATED": f"FCM refused a fresh access token: {_CREDENTIALS_HINT}",
    "PERMISSION_DENIED": "the service account may not send: enable the FCM API for the "
                         f"project and grant it Firebase messaging ({_CREDENTIALS_HINT})",
    "NOT_FOUND": "no such project: check project_id in GATEWAY_FCM_CREDENTIALS_FILE",
}
_TRANSIENT_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


def classify(response: HttpResponse) -> SendError:
    """Translate a refusal from FCM into our error, in this one place."""
    error = _FcmError.parse(response)
    status = response.status
    text = f"FCM {status} {error.code}" + (f": {error.message}" if error.message else "")
    text = text[:400]
    if error.code == "UNREGISTERED" or (error.code == "INVALID_ARGUMENT" and error.token_problem):
        return InvalidTokenError(text)
    if error.code in _TRANSIENT_CODES or status == 429 or status >= 500:
        return TransientSendError(text, retry_after=response.retry_after)
    if error.code in _CONFIGURATION_HINTS:
        return PermanentSendError(f"{text} ({_CONFIGURATION_HINTS[error.code]})")
    return PermanentSendError(text)


@dataclass(frozen=True, slots=True)
class _AccessToken:
    value: str
    refresh_at: float  # unix time


class FcmSender:
    """Sends :class:`OutboundPush` through FCM HTTP v1, up to ``max_concurrency`` at once."""

    channel = "push"
    platform = "fcm"

    def __init__(
        self,
        config: FcmConfig,
        *,
        http: HttpClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` gives unix time: the assertion's ``iat`` and when the token runs out."""
        self._config = config
        self._clock = clock
        self._key = load_rs256_key(config.credentials["private_key"].encode())
        project = quote(config.credentials["project_id"], safe="")
        self._send_url = f"{config.base_url.rstrip('/')}/v1/projects/{project}/messages:send"
        self._token: _AccessToken | None = None
        self._token_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._owns_http = http is None
        self._http = http or HttpClient(
            name="FCM",
            connect_timeout=config.timeout,
            read_timeout=config.timeout,
            max_connections=config.max_concurrency,
        )

    async def send(self, message: OutboundPush) -> SendResult:
        """Send one push; raise a :class:`~adapters.errors.SendError` subclass if refused."""
        body = build_message(message, now=self._clock())
        async with self._slots:
            token = await self._access_token()
            response = await self._send(body, token, allowed=(200, 401))
            if response.status == 401:
                if _FcmError.parse(response).code == "THIRD_PARTY_AUTH_ERROR":
                    raise classify(response)  # APNs refused FCM, not FCM us: no new token
                # Our token was revoked or expired early: one new token, one more try.
                response = await self._send(body, await self._access_token(stale=token))
        name = response.json.get("name") if isinstance(response.json, dict) else None
        return SendResult(provider_message_id=name if isinstance(name, str) else None)

    async def _send(self, body: dict[str, Any], token: str,
                    allowed: tuple[int, ...] = (200,)) -> HttpResponse:
        return await self._http.request("POST", self._send_url, json=body, allowed=allowed,
                                        headers={"Authorization": f"Bearer {token}"},
                                        classify=classify)

    async def _access_token(self, *, stale: str | None = None) -> str:
        """The shared access token; ``stale`` is one FCM just refused, so not to be returned."""
        token = self._token
        if token is not None and token.value != stale and self._clock() < token.refresh_at:
            return token.value
        async with self._token_lock:
            # Whoever held the lock before us may have fetched a good one already.
            token = self._token
            if token is None or token.value == stale or self._clock() >= token.refresh_at:
                token = self._token = await self._fetch_token()
            return token.value

    async def _fetch_token(self) -> _AccessToken:
        now = self._clock()
        claims = {"iss": self._config.credentials["client_email"], "scope": SCOPE,
                  "aud": self._config.token_url, "iat": int(now),
                  "exp": int(now) + ASSERTION_LIFETIME_SECONDS}
        form = {"grant_type": GRANT_TYPE, "assertion": sign_rs256(self._key, claims)}
        response = await self._http.request("POST", self._config.token_url, data=form,
                                            classify=_token_refused)
        answer = response.json if isinstance(response.json, dict) else {}
        try:
            value, expires_in = str(answer["access_token"]), float(answer["expires_in"])
        except (KeyError, TypeError, ValueError):
            raise TransientSendError("Google's token endpoint answered without a token") from None
        return _AccessToken(value, now + expires_in - TOKEN_EARLY_REFRESH_SECONDS)

    async def close(self) -> None:
        """Close the HTTP connection pool (unless it was handed in ready-made)."""
        if self._owns_http:
            await self._http.close()


def _token_refused(response: HttpResponse) -> SendError:
    answer = response.json if isinstance(response.json, dict) else {}
    error = (f"{answer['error']}: {answer.get('error_description', '')}" if "error" in answer
             else f"HTTP {response.status}: {describe(response)}")
    text = f"Google's token endpoint refused the service account ({error})"[:400]
    if response.status in (408, 429) or response.status >= 500:
        return TransientSendError(text, retry_after=response.retry_after)
    # invalid_grant: a deleted key, a wrong client_email, or this host's clock far off.
    return PermanentSendError(f"{text}: {_CREDENTIALS_HINT} and this host's clock")
