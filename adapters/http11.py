"""A lean HTTP/1.1 client on an :class:`asyncio.Protocol`: the transport under ``adapters/http.py``.

Every SMS goes out through it, so a request is kept to little work: the request line and
``Host`` of a URL are built once (cached per method and URL string), the request leaves
in one ``transport.write``, the answer is parsed in ``data_received`` as it arrives (usually
all of it in one call), and the awaiting caller holds one future, no task (the read timeout is
one timer per connection, not per request). ``python -m bench.http_micro`` measures the client
CPU of an SMS-shaped request: about a third of what aiohttp's client cost.

Not here, because no provider needs them: redirects (never followed, as before), proxies,
decompression, request pipelining, Happy Eyeballs (addresses are tried in turn).

- **URLs** are parsed by yarl, as aiohttp parses them, so a URL string reaches the server as
  aiohttp would have sent it: ``raw_path_qs`` is the request target, ``host_port_subcomponent``
  the ``Host`` header. ``http`` and ``https`` only (TLS: the system trust store, SNI); another
  scheme, credentials in the URL or a URL that does not parse is :class:`InvalidUrlError`.
- **Connections** are pooled per (scheme, host, port) and reused last-in first-out, so the
  busiest few stay warm and the rest age out. ``max_connections`` bounds the requests in
  flight and the connections open at once (an idle connection to another origin is closed to
  make room). A connection is never reused once the peer closed it, after ``Connection:
  close`` or an HTTP/1.0 answer without keep-alive, after a body read to the close, after a
  timeout or a cancellation, nor once idle for ``keepalive_seconds`` (servers close idle
  connections, and the less often our request meets that close in flight, the better).
- **Retry**: a request that fails on a *reused* connection because the peer closed or reset
  it before one byte of the answer arrived is sent once more on a new connection. That is what
  a server closing an idle connection just as our request arrives looks like; the server then
  closed without reading the request, so it was not processed. It could also be a server that
  read the request and died before answering; sending again then risks a duplicate, but the
  same one the gateway risks anyway, since the alternative is a ``TransientSendError`` after
  which the message is sent again a little later. Never retried: a failure on a new
  connection, after part of the answer, or a timeout.
- **Answers**: the status line (HTTP/1.1 or 1.0), headers (a ``CIMultiDict``),
  and a body framed by ``Content-Length``, by ``Transfer-Encoding: chunked`` (trailers read
  and dropped) or by the connection's close; none for ``HEAD``, 1xx, 204 and 304. Interim 1xx
  answers (``100 Continue``) are skipped. No ``Accept-Encoding`` is sent, so bodies come as
  they are; a ``Content-Encoding`` that comes anyway is left alone.
- **Limits**: a header section over 64 KiB, a body over 10 MiB, or anything unparseable is
  :class:`MalformedResponseError`, and the connection is closed.
- **Timeouts**: ``connect_timeout`` bounds TCP connect and TLS handshake, ``read_timeout`` the
  whole wait for the answer, from the write to its last byte (not each read).
- **Cancelling** the awaiting task closes the connection: an answer still due on it would be
  read as the next request's.
- :meth:`Http11Client.close` closes the idle connections at once and each busy one when its
  request ends (requests under way are left to finish, not cut off).

Errors: ``OSError`` while connecting (refused, DNS, TLS verification: as the event loop
raises it) and::

    Http11Error                 base; the message is short and safe to log
    ├── InvalidUrlError         the URL does not parse or is not http(s)
    ├── Http11TimeoutError      also a TimeoutError: no connection or no complete answer in time
    ├── MalformedResponseError  an answer that is not HTTP/1.x or over a limit
    ├── ConnectionLostError     closed or reset by the peer before the answer was complete
    └── ClientClosedError       the client was closed
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final, cast

from multidict import CIMultiDict
from yarl import URL

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
# A chunk-size line is a few hex digits and maybe an extension; more is not HTTP.
MAX_CHUNK_LINE_BYTES: Final = 4096
# aiohttp's default keep-alive: below the idle timeouts of common servers (nginx 75 s, ALBs 60 s).
KEEPALIVE_SECONDS: Final = 15.0
# A timer firing this early still counts as on time (libuv's clock is in milliseconds).
_TIMER_SLACK_SECONDS: Final = 0.002
# How long close() waits for the idle connections' sockets to be closed.
CLOSE_GRACE_SECONDS: Final = 2.0
URL_CACHE_SIZE: Final = 256
USER_AGENT: Final = "messaging-gateway"

# Methods whose request has a meaning for a body: sent without one, they say Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Headers this client writes itself; a caller's would contradict them.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "user-agent"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY_STATUSES = frozenset({204, 304})
_BLANK = " \t"
_FOLD = re.compile(r"\r\n[ \t]+")
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")

# Parser states.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE = range(8)


class Http11Error(Exception):
    """Base of this module's errors; the message is short and safe to log."""


class InvalidUrlError(Http11Error):
    """Raised when a URL does not parse, has no host or has credentials, or is not http(s)."""


class Http11TimeoutError(Http11Error, TimeoutError):
    """Raised when no connection was made, or no complete answer came, in the time allowed."""


class MalformedResponseError(Http11Error):
    """Raised when the answer is not well-formed HTTP/1.x, or its head or body is over a limit."""


class ConnectionLostError(Http11Error):
    """Raised when the peer closed or reset the connection before the answer was complete.

    ``nothing_received`` is true when not one byte of the answer had arrived.
    """

    def __init__(self, message: str, *, nothing_received: bool) -> None:
        super().__init__(message)
        self.nothing_received = nothing_received


class ClientClosedError(Http11Error):
    """Raised when a request is made on a closed :class:`Http11Client`."""


class Http11Response:
    """A complete answer: ``status``, ``headers`` (case-insensitive), ``body``. Read-only by
    convention: nothing is copied on the way to the caller."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Http11Response(status={self.status}, body={self.body[:100]!r})"


def encode_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Header lines (``Name: value\\r\\n``, UTF-8) for :meth:`Http11Client.request`.

    Raises ``ValueError`` for a name that is not an HTTP token, a value holding CR, LF or NUL
    (it would end the header early and let the rest of the value forge headers), or one of the
    headers the client writes itself (Host, Content-Length, Transfer-Encoding, User-Agent).
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for name, value in items:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"HTTP header {name} has CR, LF or NUL in its value")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"HTTP header {name} is written by the client itself")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


class _Target:
    """What a (method, URL) pair needs, worked out once: where to connect, the request head."""

    __slots__ = ("key", "host", "port", "tls", "server_hostname", "head", "empty_body",
                 "head_only")

    def __init__(self, method: str, url: str) -> None:
        if not _TOKEN.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        try:
            parsed = URL(url)
            scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
            authority, target = parsed.host_port_subcomponent, parsed.raw_path_qs
            credentials = parsed.raw_user is not None or parsed.raw_password is not None
        except ValueError as exc:  # UnicodeError (IDNA) included
            raise InvalidUrlError(f"invalid URL {url[:200]!r}: {exc}") from None
        if scheme not in ("http", "https"):
            raise InvalidUrlError(f"invalid URL {url[:200]!r}: not http or https")
        if not host or port is None or authority is None:
            raise InvalidUrlError(f"invalid URL {url[:200]!r}: no host")
        if credentials:
            raise InvalidUrlError("invalid URL: credentials in a URL are not supported")
        # yarl percent-encodes what it must; anything left that could break the request line
        # (a space, a control character) is refused rather than sent.
        for part in (target, authority):
            if not (part.isascii() and part.isprintable()) or " " in part:
                raise InvalidUrlError(f"invalid URL {url[:200]!r}: unsendable characters")
        self.key = (scheme, host, port)
        self.host = host
        self.port = port
        self.tls = scheme == "https"
        # As aiohttp does: no trailing dot in SNI and certificate matching.
        self.server_hostname = host.rstrip(".") if self.tls else None
        self.head = (
            f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        ).encode("ascii")
        # The line that ends a head without a body: POST and co say they have none.
        self.empty_body = b"Content-Length: 0\r\n\r\n" if method in _BODY_METHODS else b"\r\n"
        self.head_only = method == "HEAD"


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """The system trust store, as aiohttp's default: made once per process (loading the CA
    certificates takes milliseconds), on the first https connection."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _target(method: str, url: str) -> _Target:
    # Errors are not cached: a bad URL is parsed again each time, which only bad URLs pay for.
    return _Target(method, url)


class Http11Client:
    """Pooled HTTP/1.1 connections to any number of origins; see the module docstring."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 100,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` verifies ``https`` servers; by default the system trust store.

        ``keepalive_seconds``: an idle connection older than this is closed, not reused.
        """
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        self._ssl = ssl_context
        # Requests holding a connection (or opening one): at most max_connections. Those over
        # the limit wait in order; a freed slot goes straight to the first of them. (What
        # asyncio.Semaphore does, for less CPU: this is paid on every request.)
        self._in_use = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._connections: set[_Connection] = set()  # open or opening, idle or in use
        self._closed = False

    async def request(
        self, method: str, url: str, *, header_block: bytes = b"", body: bytes | None = None
    ) -> Http11Response:
        """Send one request and return the complete answer, whatever its status.

        ``header_block`` is extra header lines from :func:`encode_headers`. Raises
        :class:`Http11Error` subclasses or ``OSError``; ``ValueError`` for a method that is not
        an HTTP token.
        """
        if self._closed:
            raise ClientClosedError("client closed")
        target = _target(method, url)
        if body is None:
            message = target.head + header_block + target.empty_body
        else:
            message = b"".join((target.head, header_block,
                                b"Content-Length: %d\r\n\r\n" % len(body), body))
        if self._in_use < self._max_connections:
            self._in_use += 1
        else:
            await self._wait_for_slot()
        try:
            connection = self._idle_connection(target.key)
            if connection is None:
                connection = await self._connect(target)
            while True:
                waiter = connection.send(message, target.head_only, self._read_timeout)
                try:
                    response = await waiter
                except ConnectionLostError as exc:
                    if not (connection.reused and exc.nothing_received) or self._closed:
                        raise
                    # The server closed the idle connection as we wrote: see "Retry" above.
                    connection = await self._connect(target)
                    continue
                except BaseException:
                    # Timed out, malformed (both already closed) or cancelled (the answer may
                    # still come, and would be read as the next request's): close it.
                    connection.abort()
                    raise
                break
            if connection.reusable and not self._closed:
                connection.idle_since = connection.loop.time()
                connection.in_pool = True
                stack = self._idle.get(connection.key)
                if stack is None:
                    self._idle[connection.key] = [connection]
                else:
                    stack.append(connection)
            else:
                connection.close()
            return response
        finally:
            self._release_slot()

    async def close(self) -> None:
        """Close the idle connections; each busy one is closed when its request ends."""
        self._closed = True
        idle = [connection for stack in self._idle.values() for connection in stack]
        self._idle.clear()
        if not idle:
            return
        waiters = [connection.closed() for connection in idle]
        for connection in idle:
            connection.close()
        await asyncio.wait(waiters, timeout=CLOSE_GRACE_SECONDS)
        for connection in idle:
            connection.abort()  # a TLS peer that never answered our close_notify

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we were cancelled: pass it on
            raise

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # else cancelled while waiting
                waiter.set_result(None)  # the slot changes hands: _in_use stays
                return
        self._in_use -= 1

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        """The most recently used idle connection to ``key`` that may still be used, if any."""
        stack = self._idle.get(key)
        if not stack:
            return None
        connection = stack.pop()
        connection.in_pool = False
        if connection.loop.time() - connection.idle_since > self._keepalive:
            # The newest is too old, so the rest are older still: close them all.
            for old in (connection, *stack):
                old.in_pool = False
                old.close()
            stack.clear()
            return None
        # A peer's close takes it out of the pool as it is noticed: what is here is open.
        connection.reused = True
        return connection

    async def _connect(self, target: _Target) -> _Connection:
        if len(self._connections) >= self._max_connections:
            self._close_one_idle()
        loop = asyncio.get_running_loop()
        connection = _Connection(self, target.key, loop)
        self._connections.add(connection)
        context = None
        if target.tls:
            context = self._ssl if self._ssl is not None else _default_ssl_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: connection, target.host, target.port, ssl=context,
                    server_hostname=target.server_hostname,
                )
        except TimeoutError:
            connection.abort()
            raise Http11TimeoutError(
                f"no connection within {self._connect_timeout:g} s"
            ) from None
        except BaseException:
            connection.abort()
            raise
        return connection

    def _close_one_idle(self) -> None:
        # Full: we hold a slot, so at most max_connections - 1 are in use and one is idle (for
        # another origin: ours had none). Close the oldest of the first origin that has one.
        for stack in self._idle.values():
            if stack:
                oldest = stack.pop(0)
                oldest.in_pool = False
                oldest.close()
                return

    def _forget(self, connection: _Connection) -> None:
        """Called by a connection as it closes: it is no longer open, idle or in use."""
        self._connections.discard(connection)
        if connection.in_pool:
            connection.in_pool = False
            stack = self._idle.get(connection.key)
            if stack is not None and connection in stack:
                stack.remove(connection)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its answer into the waiting future."""

    __slots__ = (
        "loop", "key", "transport", "reused", "in_pool", "idle_since", "_pool", "_open",
        "_waiter", "_timer", "_deadline", "_timeout", "_head_only", "_received", "_buffer",
        "_state", "_status", "_headers", "_keep_alive", "_remaining", "_parts", "_size",
        "_closed_waiter",
    )

    def __init__(self, pool: Http11Client, key: tuple[str, str, int],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.reused = False  # taken from the pool: a failure may be the server's idle close
        self.in_pool = False
        self.idle_since = 0.0
        self._pool = pool
        self._open = False  # connected, and neither side has closed
        self._waiter: asyncio.Future[Http11Response] | None = None
        # One timer per connection, not per request: see send().
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._timeout = 0.0
        self._head_only = False
        self._received = False  # a byte of the current answer has arrived
        self._buffer = bytearray()  # what has arrived and is not parsed yet
        self._state = _IDLE
        self._status = 0
        self._headers: CIMultiDict[str] | None = None
        self._keep_alive = False
        self._remaining = 0
        self._parts: list[bytes | bytearray] = []
        self._size = 0
        self._closed_waiter: asyncio.Future[None] | None = None

    @property
    def reusable(self) -> bool:
        """True when the last answer was complete and the connection may carry another."""
        return self._open and self._keep_alive and self._state == _IDLE and not self._buffer

    # --- used by the pool ---------------------------------------------------------------------

    def send(
        self, message: bytes, head_only: bool, timeout: float
    ) -> asyncio.Future[Http11Response]:
        """Write one request; the future gets its answer or the error that ended it."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        self._head_only = head_only
        self._received = False
        self._state = _HEAD
        self._keep_alive = False
        self._timeout = timeout
        # A timer per request costs more than the rest of the request's bookkeeping on
        # uvloop (a libuv handle made, started, stopped and closed). Instead the connection
        # keeps one timer: armed for the first deadline, and when it fires, either the answer
        # is late (timeout), or no request is waiting (it stops), or a later request set a
        # later deadline (it is armed again for that). A timer for 10 s outlives hundreds of
        # requests, and a timeout still fires on time.
        self._deadline = self.loop.time() + timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
        if not self._open or self.transport is None:
            self._fail(ConnectionLostError("connection closed before the request was sent",
                                           nothing_received=True))
            return waiter
        try:
            self.transport.write(message)
        except Exception as exc:  # uvloop raises on a handle that closed under us
            self._fail(ConnectionLostError(f"write failed: {type(exc).__name__}",
                                           nothing_received=True))
        return waiter

    def close(self) -> None:
        """Close gracefully: what was written still goes out first."""
        self._open = False
        self._pool._forget(self)
        if self.transport is not None:
            self.transport.close()

    def closed(self) -> asyncio.Future[None]:
        """A future resolved once the socket is closed (at once if it is not open)."""
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
            if self.transport is None:
                self._closed_waiter.set_result(None)
        return self._closed_waiter

    def abort(self) -> None:
        """Close at once, dropping anything unsent: for a connection in an unknown state."""
        self._open = False
        self._pool._forget(self)
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._open = True

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (while idle, or after a cancel): the server is out of step
            # with us, so nothing more can be read from this connection reliably.
            self.abort()
            return
        self._received = True
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer  # type: ignore[assignment]  # parsed alike
        try:
            used = self._parse(data)
        except MalformedResponseError as exc:
            self._fail(exc)
            return
        if data is buffer:
            del buffer[:used]
        elif used < len(data):
            buffer += memoryview(data)[used:]

    def eof_received(self) -> bool:
        self._peer_closed(None)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_closed(exc)
        self.transport = None  # closed: close(), abort() and closed() have nothing left to do
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    # --- the answer ----------------------------------------------------------------------------

    def _peer_closed(self, exc: Exception | None) -> None:
        self._open = False
        self._pool._forget(self)  # out of the pool at once, not at connection_lost
        if self._waiter is None:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            self._complete(b"".join(self._parts))
            return
        reason = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        what = "before the answer" if not self._received else "in the middle of the answer"
        self._fail(ConnectionLostError(f"connection closed {what}{reason}"[:300],
                                       nothing_received=not self._received))

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # idle (or closed): nothing to time
        # Timers may fire a little early (libuv rounds to milliseconds): allow for it rather
        # than arm again for the last fraction of a millisecond.
        if self.loop.time() >= self._deadline - _TIMER_SLACK_SECONDS:
            self._fail(Http11TimeoutError(f"no complete answer within {self._timeout:g} s"))
        else:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._waiter = None
        self._state = _IDLE
        self._parts = []
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _complete(self, body: bytes) -> None:
        waiter = self._waiter
        self._waiter = None
        self._state = _IDLE
        if self._parts:
            self._parts = []
        assert self._headers is not None
        if waiter is not None and not waiter.done():
            waiter.set_result(Http11Response(self._status, self._headers, body))

    def _head(self, head: bytes | bytearray) -> None:
        """Read a status line and header section; set how the body is framed, if any."""
        text = head.decode("utf-8", "surrogateescape")  # as aiohttp decodes headers
        if "\r\n " in text or "\r\n\t" in text:  # obsolete line folding: one space instead
            text = _FOLD.sub(" ", text)
        lines = text.split("\r\n")
        # "HTTP/1.1 201 Created": version, a space, three digits, then a space and a reason
        # or nothing. By hand: a regular expression here cost more than the rest of the line.
        line = lines[0]
        version, code = line[:9], line[9:12]
        if ((version != "HTTP/1.1 " and version != "HTTP/1.0 ") or not code.isdigit()
                or not code.isascii() or (len(line) > 12 and line[12] != " ")):
            raise MalformedResponseError(f"not an HTTP/1.x status line: {line[:80]!r}")
        status = int(code)
        if status < 200:
            if status == 101:  # we never ask to switch protocols
                raise MalformedResponseError("unexpected 101 Switching Protocols")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        del lines[0]
        fields: list[tuple[str, str]] = []
        append = fields.append
        for line in lines:
            name, colon, value = line.partition(":")
            # No colon, no name, or a blank before the colon ("" is in any string).
            if not colon or name[-1:] in _BLANK:
                raise MalformedResponseError(f"bad header line: {line[:80]!r}")
            append((name, value.strip(_BLANK)))
        headers = CIMultiDict(fields)
        connection = headers.get("Connection")
        if version == "HTTP/1.1 ":
            keep_alive = connection is None or "close" not in _tokens(connection)
        else:  # HTTP/1.0 closes unless it says otherwise
            keep_alive = connection is not None and "keep-alive" in _tokens(connection)
        self._status = status
        self._headers = headers
        if self._head_only or status in _NO_BODY_STATUSES:
            self._keep_alive = keep_alive
            self._complete(b"")
            return
        self._size = 0
        transfer_encoding = headers.get("Transfer-Encoding")
        lengths = headers.getall("Content-Length", None)
        if transfer_encoding is not None:
            codings = [coding.strip(_BLANK).lower() for coding in transfer_encoding.split(",")]
            if codings[-1] == "chunked" and "chunked" not in codings[:-1]:
                self._state = _CHUNK_SIZE
                # Both framings at once is how requests are smuggled: use this answer, no more.
                self._keep_alive = keep_alive and lengths is None
            elif "chunked" in codings:
                raise MalformedResponseError(f"bad Transfer-Encoding: {transfer_encoding[:80]!r}")
            else:  # not chunked last: the body ends with the connection (RFC 9112 6.3)
                self._state = _UNTIL_CLOSE
                self._keep_alive = False
        elif lengths is not None:
            text = lengths[0]
            if len(lengths) == 1 and len(text) < 8 and text.isdigit() and text.isascii():
                length = int(text)  # the usual case, under the limit whatever the digits
            else:
                length = _content_length(lengths)
            self._keep_alive = keep_alive
            if length == 0:
                self._complete(b"")
            else:
                self._state = _LENGTH
                self._remaining = length
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False

    def _parse(self, data: bytes | bytearray) -> int:
        """Parse what ``data`` holds of the answer; return how many bytes were used."""
        pos, end_of_data = 0, len(data)
        while pos < end_of_data:
            state = self._state
            if state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if end_of_data - pos > MAX_HEAD_BYTES:
                        raise MalformedResponseError("header section over 64 KiB")
                    return pos
                if end - pos > MAX_HEAD_BYTES:
                    raise MalformedResponseError("header section over 64 KiB")
                self._head(data[pos:end])
                pos = end + 4
                # The usual case: the whole body came with the head. One slice, no list.
                if self._state == _LENGTH and end_of_data - pos >= self._remaining:
                    end = pos + self._remaining
                    self._complete(bytes(data[pos:end]))
                    pos = end
            elif state == _LENGTH:
                take = min(self._remaining, end_of_data - pos)
                self._parts.append(data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._complete(b"".join(self._parts))
            elif state == _CHUNK_SIZE:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if end_of_data - pos > MAX_CHUNK_LINE_BYTES:
                        raise MalformedResponseError("chunk size line too long")
                    return pos
                size = _chunk_size(data[pos:end])
                pos = end + 2
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._size += size
                    if self._size > MAX_BODY_BYTES:
                        raise MalformedResponseError("body over 10 MiB")
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                take = min(self._remaining, end_of_data - pos)
                self._parts.append(data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if end_of_data - pos < 2:
                    return pos
                if data[pos:pos + 2] != b"\r\n":
                    raise MalformedResponseError("chunk not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if end_of_data - pos < 2:
                    return pos
                if data[pos:pos + 2] == b"\r\n":
                    pos += 2
                else:
                    end = data.find(b"\r\n\r\n", pos)
                    if end < 0:
                        if end_of_data - pos > MAX_HEAD_BYTES:
                            raise MalformedResponseError("trailer section over 64 KiB")
                        return pos
                    pos = end + 4  # trailers are read and dropped
                self._complete(b"".join(self._parts))
            elif state == _UNTIL_CLOSE:
                self._size += end_of_data - pos
                if self._size > MAX_BODY_BYTES:
                    raise MalformedResponseError("body over 10 MiB")
                self._parts.append(data[pos:])
                return end_of_data
            else:  # _IDLE: bytes after the complete answer
                self._keep_alive = False
                return end_of_data
        return pos


def _tokens(value: str) -> set[str]:
    """The comma-separated tokens of a header value such as ``Connection``, lower case."""
    return {token.strip(_BLANK).lower() for token in value.split(",")}


def _content_length(values: list[str]) -> int:
    """The body length that every ``Content-Length`` value agrees on (RFC 9110 8.6)."""
    found = {item.strip(_BLANK) for value in values for item in value.split(",")}
    if len(found) != 1:
        raise MalformedResponseError(f"conflicting Content-Length: {values[:4]!r}")
    text = found.pop()
    if not (text.isdigit() and text.isascii()):
        raise MalformedResponseError(f"bad Content-Length: {text[:40]!r}")
    # Length first: int() refuses thousands of digits with a ValueError of its own.
    length = int(text) if len(text) <= 12 else MAX_BODY_BYTES + 1
    if length > MAX_BODY_BYTES:
        raise MalformedResponseError("body over 10 MiB")
    return length


def _chunk_size(line: bytes | bytearray) -> int:
    """The size on a chunk-size line; an extension after ``;`` is ignored."""
    match = _CHUNK_SIZE_LINE.fullmatch(line)
    if match is None:
        raise MalformedResponseError(f"bad chunk size line: {bytes(line[:40])!r}")
    return int(match[1], 16)
