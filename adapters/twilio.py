"""SMS through Twilio's Messages API, over the shared :class:`~adapters.http.HttpClient`.

One send is ``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded
(``To``, ``From``, ``Body``, ``StatusCallback``), with HTTP Basic auth (account SID, auth token).
Any 2xx (Twilio answers 201) is success and the ``sid`` of the body is the provider message id.

Refusals map onto our errors from the error body's ``code``, then the HTTP status:

=====================================  ===========================================
21610 (recipient replied STOP)          :class:`~adapters.errors.OptedOutError`
21211 (invalid To), 21614 (not SMS)     ``PermanentSendError`` with code and message
429, code 20429, 5xx                    ``TransientSendError`` honouring Retry-After
401 (credentials refused)               ``TransientSendError``: our configuration
other 4xx                               ``PermanentSendError``
timeout, refused or dropped connection  ``TransientSendError`` (in ``adapters/http.py``)
=====================================  ===========================================

Each send waits for its origination number's token bucket (10DLC numbers 1/s, short codes
faster, per configuration), then for one of ``max_concurrency`` slots, and goes through the
provider's circuit breaker, so an outage defers messages instead of hammering Twilio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.base import OutboundSms, SendResult
from adapters.breaker import CircuitBreaker
from adapters.errors import OptedOutError, PermanentSendError, SendError, TransientSendError
from adapters.http import HttpClient, HttpResponse, describe, encode_form
from adapters.ratelimit import ConcurrencyLimit, RateLimiter

STATUS_CALLBACK_PATH = "/v1/status/twilio"

OPTED_OUT = 21610
PERMANENT_CODES = frozenset({21211, 21614})
TOO_MANY_REQUESTS = 20429


def status_callback_url(public_url: str | None) -> str | None:
    """The ``StatusCallback`` URL under the gateway's public base URL, or ``None`` without one."""
    if not public_url:
        return None
    return public_url.rstrip("/") + STATUS_CALLBACK_PATH


@dataclass(frozen=True, slots=True, kw_only=True)
class TwilioConfig:
    """Account, endpoint and limits. ``number_rates`` overrides ``rate_per_number`` per ``From``.

    ``status_callback_url`` is the whole URL (see :func:`status_callback_url`); ``None`` asks
    for no callbacks. ``timeout`` is both the connect and the read timeout, in seconds.
    """

    account_sid: str
    auth_token: str
    base_url: str = "https://api.twilio.com"
    default_from: str | None = None
    status_callback_url: str | None = None
    rate_per_number: float = 1.0
    number_rates: Mapping[str, float] = field(default_factory=dict)
    burst: int = 1
    max_concurrency: int = 50
    timeout: float = 10.0
    breaker_threshold: int = 5
    breaker_reset_seconds: float = 30.0


def classify(response: HttpResponse) -> SendError:
    """Translate a refused Twilio response into our error, from its ``code`` then its status."""
    body = response.json if isinstance(response.json, dict) else {}
    code = _code(body.get("code"))
    message = body.get("message") or describe(response)
    label = f"twilio error {code}" if code else f"twilio HTTP {response.status}"
    reason = f"{label}: {message}"[:500]
    if code == OPTED_OUT:
        return OptedOutError(reason)
    if code in PERMANENT_CODES:
        return PermanentSendError(reason)
    if response.status == 429 or code == TOO_MANY_REQUESTS or response.status >= 500:
        return TransientSendError(reason, retry_after=response.retry_after)
    if response.status == 401:
        # Refused credentials are our configuration, not the message: wait for the fix (and
        # let the breaker pause the provider) rather than fail every message for good.
        return TransientSendError(reason, retry_after=response.retry_after)
    return PermanentSendError(reason)


class TwilioSender:
    """Sends :class:`OutboundSms` through Twilio. One per process; ``close()`` at shutdown."""

    channel = "sms"

    def __init__(
        self,
        config: TwilioConfig,
        *,
        http: HttpClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._url = (
            f"{config.base_url.rstrip('/')}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        )
        # Encoded once: the callback URL is the same on every request and, all of it being
        # characters to escape, the costliest field to encode.
        self._callback_field = (
            b"&" + encode_form({"StatusCallback": config.status_callback_url})
            if config.status_callback_url
            else b""
        )
        # One tuple for the life of the sender: the key of the client's cached header set.
        self._basic_auth = (config.account_sid, config.auth_token)
        self._owns_http = http is None
        self._http = http or HttpClient(
            name="twilio",
            connect_timeout=config.timeout,
            read_timeout=config.timeout,
            max_connections=config.max_concurrency,
        )
        self._rates = RateLimiter(
            config.rate_per_number, config.burst, config.number_rates, clock=clock
        )
        self._slots = ConcurrencyLimit(config.max_concurrency)
        self.breaker = CircuitBreaker(
            config.breaker_threshold, config.breaker_reset_seconds, clock, name="twilio"
        )

    def _form(self, message: OutboundSms, from_: str) -> bytes:
        """The url-encoded form: ``To``, ``From``, ``Body``, then ``StatusCallback`` if set."""
        fields = (("To", message.to), ("From", from_), ("Body", message.body))
        return encode_form(fields) + self._callback_field

    async def send(self, message: OutboundSms) -> SendResult:
        """Send one SMS; raise ``TransientSendError``, ``PermanentSendError``/``OptedOutError``."""
        from_ = message.from_ or self._config.default_from
        if not from_:
            raise PermanentSendError("no From number: the message has none and no default is set")
        # Fail fast while the breaker is open, before spending a token and waiting for it.
        self.breaker.check()
        await self._rates.acquire(from_)
        async with self._slots:
            with self.breaker.guard():
                response = await self._http.request(
                    "POST",
                    self._url,
                    data=self._form(message, from_),
                    basic_auth=self._basic_auth,
                    classify=classify,
                )
        return SendResult(provider_message_id=_sid(response.json))

    async def close(self) -> None:
        """Close the HTTP connection pool (unless it was handed in ready-made)."""
        if self._owns_http:
            await self._http.close()


def _code(value: Any) -> int | None:
    # Twilio sends the code as a number; accept a numeric string too rather than misread it.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _sid(body: Any) -> str | None:
    # A 2xx means Twilio took the message, sid or not: retrying would send it twice, so a body
    # without a usable sid still counts as sent, just without a provider id.
    sid = body.get("sid") if isinstance(body, dict) else None
    return sid if isinstance(sid, str) and sid else None
