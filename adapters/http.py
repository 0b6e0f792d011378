"""The request helper every HTTP/1.1 provider client shares: one session, one error edge.

:class:`HttpClient` keeps one ``aiohttp.ClientSession`` (one connection pool) for the life of
the sender, with connect and read timeouts from configuration. :meth:`HttpClient.request`:

- translates every aiohttp, socket and timeout exception into
  :class:`~adapters.errors.TransientSendError`, here and nowhere else;
- reads the body, parses it as JSON when it is JSON, and parses ``Retry-After``;
- returns an :class:`HttpResponse` when the status is allowed, and otherwise raises the
  ``SendError`` that the provider's ``classify`` function (default :func:`classify_status`)
  makes of the response.
"""

from __future__ import annotations

import base64
import email.utils
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from adapters.errors import PermanentSendError, SendError, TransientSendError

SUCCESS = range(200, 300)

# Statuses that say "not now" rather than "not this message".
TRANSIENT_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A provider's answer. ``json`` is ``None`` when the body is empty or not JSON."""

    status: int
    headers: Mapping[str, str]
    json: Any
    text: str
    retry_after: float | None


Classify = Callable[[HttpResponse], SendError]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date; else ``None``.

    A date in the past gives 0. Garbage gives ``None``: a bad hint is no hint.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT; an obsolete form may parse without a zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def describe(response: HttpResponse, limit: int = 300) -> str:
    """A short, loggable summary of a refused response's body."""
    text = " ".join(response.text.split())
    return text[:limit] if text else "(empty body)"


def classify_status(response: HttpResponse, *, provider: str = "provider") -> SendError:
    """The default reading of a refused status: 429, 408 and 5xx transient, other 4xx permanent."""
    reason = f"{provider} answered HTTP {response.status}: {describe(response)}"
    if response.status in TRANSIENT_STATUSES or response.status >= 500:
        return TransientSendError(reason, retry_after=response.retry_after)
    return PermanentSendError(reason)


class HttpClient:
    """One provider's HTTP/1.1 client. Pass ``session`` to share one (it is then not closed)."""

    def __init__(
        self,
        *,
        name: str,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.name = name
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a session must be created inside the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                headers={"User-Agent": "messaging-gateway"},
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        allowed: Container[int] = SUCCESS,
        classify: Classify | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request; return the response if its status is ``allowed``, else raise."""
        body = orjson.dumps(json) if json is not None else None
        sent_headers = dict(headers or {})
        if basic_auth is not None:
            sent_headers["Authorization"] = _basic_authorization(*basic_auth)
        if body is not None:
            sent_headers.setdefault("Content-Type", "application/json")
        try:
            async with self._client().request(
                method, url, data=dict(data) if data is not None else body,
                headers=sent_headers, allow_redirects=False,
            ) as raw:
                content = await raw.read()
                status, response_headers = raw.status, raw.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._transport_error(exc) from None
        response = HttpResponse(
            status=status,
            headers=response_headers,
            json=_json_or_none(content),
            text=content.decode("utf-8", "replace"),
            retry_after=parse_retry_after(response_headers.get("Retry-After")),
        )
        if status in allowed:
            return response
        if classify is None:
            raise classify_status(response, provider=self.name)
        raise classify(response)

    def _transport_error(self, exc: BaseException) -> TransientSendError:
        # Timeouts first: aiohttp's timeout errors are ClientErrors and TimeoutErrors both.
        if isinstance(exc, TimeoutError):
            return TransientSendError(f"{self.name} timed out ({type(exc).__name__})")
        return TransientSendError(
            f"{self.name} connection problem: {type(exc).__name__}: {exc}"[:500]
        )

    async def close(self) -> None:
        """Close the session's connections, if this client made the session."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _basic_authorization(user: str, password: str) -> str:
    # Built by hand: aiohttp.BasicAuth is deprecated in newer aiohttp, and its replacement
    # does not exist in the older versions we still support.
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _json_or_none(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
