"""The request helper every HTTP/1.1 provider client shares: one connection pool, one error edge.

:class:`HttpClient` keeps one :class:`~adapters.http11.Http11Client` (our own lean HTTP/1.1
client: one connection pool) for the life of the sender, with connect and read timeouts from
configuration. :meth:`HttpClient.request`:

- translates every transport, socket, timeout and URL error into
  :class:`~adapters.errors.TransientSendError`, here and nowhere else;
- reads the body, parses it as JSON when it is JSON, and parses ``Retry-After`` when present;
- returns an :class:`HttpResponse` when the status is allowed, and otherwise raises the
  ``SendError`` that the provider's ``classify`` function (default :func:`classify_status`)
  makes of the response.

It is on the path of every SMS, so per-request work that gives the same answer each time is
done once: form bodies are url-encoded to bytes here (the bytes aiohttp's ``FormData`` would
send), the fixed header lines (Basic credentials, content type) are encoded once per
credentials and kept, and the request line and ``Host`` of a URL once per URL (in
``adapters/http11.py``).
"""

from __future__ import annotations

import base64
import email.utils
import functools
import math
from collections.abc import Callable, Container, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from adapters.errors import PermanentSendError, SendError, TransientSendError
from adapters.http11 import Http11Client, Http11Error, encode_headers

SUCCESS = range(200, 300)

# Statuses that say "not now" rather than "not this message".
TRANSIENT_STATUSES = frozenset({408, 425, 429})

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"

# Header lines kept (one set per credentials and content type): a process talks to a few providers
# with one or two credentials each; the bound only stops an odd caller from growing it.
HEADER_CACHE_SIZE = 64


class HttpResponse:
    """A provider's answer. ``json`` is ``None`` when the body is empty or not JSON.

    ``content`` is the raw body; ``text`` is that body decoded as UTF-8 (bad bytes replaced),
    decoded on first read, since only refusals are ever described. ``retry_after`` is the
    ``Retry-After`` header in seconds (see :func:`parse_retry_after`), ``None`` without one.
    Treat instances as read-only.
    """

    __slots__ = ("status", "headers", "json", "retry_after", "content", "_text")

    def __init__(
        self,
        *,
        status: int,
        headers: Mapping[str, str],
        json: Any,
        retry_after: float | None,
        content: bytes = b"",
        text: str | None = None,
    ) -> None:
        """Give ``content`` (``text`` is then decoded from it when read), or ``text`` itself."""
        self.status = status
        self.headers = headers
        self.json = json
        self.retry_after = retry_after
        self.content = content
        self._text = text

    @property
    def text(self) -> str:
        """The body as text: UTF-8, undecodable bytes replaced."""
        if self._text is None:
            self._text = self.content.decode("utf-8", "replace")
        return self._text

    def __repr__(self) -> str:
        return (
            f"HttpResponse(status={self.status}, json={self.json!r}, "
            f"retry_after={self.retry_after!r}, content={self.content[:100]!r})"
        )


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


def encode_form(fields: Mapping[str, str] | Sequence[tuple[str, str]]) -> bytes:
    """``fields`` as an ``application/x-www-form-urlencoded`` body, in the order given.

    Exactly what aiohttp's ``FormData`` sends for the same fields (it calls ``urlencode`` too):
    UTF-8, percent-encoded except ``A-Za-z0-9_.-~``, spaces as ``+``.
    """
    items = fields.items() if isinstance(fields, Mapping) else fields
    try:
        return "&".join([f"{_form_quote(k)}={_form_quote(v)}" for k, v in items]).encode("ascii")
    except AttributeError:  # a value that is not text: urlencode's own conversions
        return urlencode(fields).encode("ascii")


# quote_plus's table as one str.translate over the UTF-8 bytes (read as Latin-1, one character
# per byte): urlencode quotes byte by byte in a Python loop, a fiftieth of each SMS's CPU.
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = [
    chr(byte) if byte in _FORM_SAFE else "+" if byte == 0x20 else f"%{byte:02X}"
    for byte in range(256)
]


def _form_quote(text: str) -> str:
    return text.encode("utf-8").decode("latin-1").translate(_FORM_TABLE)


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
    """One provider's HTTP/1.1 client: a connection pool, opened on first use."""

    def __init__(
        self,
        *,
        name: str,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 100,
    ) -> None:
        """``name`` starts every error's reason; ``max_connections`` bounds requests in flight
        and connections open at once."""
        self.name = name
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._pool: Http11Client | None = None

    def _client(self) -> Http11Client:
        # Made on first use, and again after close(): a closed client can still be used.
        if self._pool is None:
            self._pool = Http11Client(
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                max_connections=self._max_connections,
            )
        return self._pool

    async def request(
        self,
        method: str,
        url: str,
        *,
        allowed: Container[int] = SUCCESS,
        classify: Classify | None = None,
        data: Mapping[str, str] | bytes | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> HttpResponse:
        """Send one request; return the response if its status is ``allowed``, else raise.

        ``data`` is a form: fields (encoded here with :func:`encode_form`) or a body already
        form-encoded; either goes as ``application/x-www-form-urlencoded``. ``json`` is
        serialised with orjson. A ``Content-Type`` in ``headers`` wins over both. A header
        value with CR or LF, or a header the client writes itself (``Host``,
        ``Content-Length``, ``Transfer-Encoding``, ``User-Agent``), is a ``ValueError``.
        """
        if data is not None and json is not None:
            raise ValueError("pass data or json, not both")
        body: bytes | None
        if data is not None:
            body = data if isinstance(data, bytes) else encode_form(data)
            content_type: str | None = FORM_CONTENT_TYPE
        elif json is not None:
            body, content_type = orjson.dumps(json), JSON_CONTENT_TYPE
        else:
            body = content_type = None
        header_block = self._headers(headers, basic_auth, content_type)
        try:
            raw = await self._client().request(method, url, header_block=header_block, body=body)
        except (Http11Error, OSError) as exc:  # TimeoutError is an OSError
            raise self._transport_error(exc) from None
        status, response_headers, content = raw.status, raw.headers, raw.body
        retry_after = response_headers.get("Retry-After")
        response = HttpResponse(
            status=status,
            headers=response_headers,
            json=_json_or_none(content),
            content=content,
            retry_after=None if retry_after is None else parse_retry_after(retry_after),
        )
        if status in allowed:
            return response
        if classify is None:
            raise classify_status(response, provider=self.name)
        raise classify(response)

    def _headers(
        self,
        headers: Mapping[str, str] | None,
        basic_auth: tuple[str, str] | None,
        content_type: str | None,
    ) -> bytes:
        """The request's extra header lines: cached when the caller adds none of its own."""
        if not headers:
            return _fixed_headers(basic_auth, content_type)
        # Caller headers (a bearer token, say) vary per request: nothing worth caching.
        return encode_headers(_build_headers(headers, basic_auth, content_type))

    def _transport_error(self, exc: BaseException) -> TransientSendError:
        if isinstance(exc, TimeoutError):
            return TransientSendError(f"{self.name} timed out ({exc})"[:500])
        return TransientSendError(
            f"{self.name} connection problem: {type(exc).__name__}: {exc}"[:500]
        )

    async def close(self) -> None:
        """Close the pool's connections (a later request opens new ones)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


@functools.lru_cache(maxsize=HEADER_CACHE_SIZE)
def _fixed_headers(basic_auth: tuple[str, str] | None, content_type: str | None) -> bytes:
    # Bytes are immutable: no request can change the set the next one is sent with.
    return encode_headers(_build_headers({}, basic_auth, content_type))


def _build_headers(
    headers: Mapping[str, str], basic_auth: tuple[str, str] | None, content_type: str | None
) -> dict[str, str]:
    sent = dict(headers)
    if basic_auth is not None:
        sent["Authorization"] = _basic_authorization(*basic_auth)
    if content_type is not None and not any(k.lower() == "content-type" for k in sent):
        sent["Content-Type"] = content_type
    return sent


def _basic_authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _json_or_none(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
