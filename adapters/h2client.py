"""A lean HTTP/2 client on asyncio and ``h2``: one connection, many concurrent streams.

Written for APNs, where a provider keeps one long-lived connection and multiplexes every push
over it. A general-purpose client (httpx: anyio cancel scopes and locks around every read and
write) cost ~0.9 ms of CPU per request; here an :class:`asyncio.Protocol` drives ``h2``
directly, so a request is one future, one timer and a few frames, and the frames of requests
started in the same event-loop turn leave in one ``write``.

- :class:`H2Client` keeps one connection, opened by the first request and again by the first
  request after it was lost, the server sent GOAWAY, or its stream ids ran low. ``https://``
  negotiates ``h2`` by ALPN; ``http://`` speaks HTTP/2 with prior knowledge.
- Streams are opened once the server's first SETTINGS has arrived, and never more at once than
  its SETTINGS_MAX_CONCURRENT_STREAMS: requests over the limit wait their turn, in order.
- Request bodies respect the send windows and resume on WINDOW_UPDATE; received DATA is
  acknowledged so that the server's windows reopen.
- Each request has a deadline covering the wait for a stream and for the answer; when it passes
  the stream is reset with CANCEL. If the server has sent nothing at all since that stream
  opened, the connection may be dead without a word (a NAT or firewall dropped it), so it gets
  a PING; no answer within ``connect_timeout`` and it is dropped like a lost one.
- GOAWAY: streams above its last stream id, and requests still waiting for a stream, fail at
  once with :class:`H2UnprocessedError`; streams at or below it may still be answered, and the
  connection closes when they have been.

Errors::

    H2Error                     base
    ├── H2ConnectError          no connection: refused, DNS, TLS, no h2 by ALPN, client closed
    ├── H2TimeoutError          no connection or no answer within the time allowed
    └── H2StreamError           the stream failed: reset by the server, connection lost
        └── H2UnprocessedError  the server did not process the request: safe to send again
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hpack.table import HeaderTable
from hyperframe.frame import Frame, GoAwayFrame

Header = tuple[bytes, bytes]

# Stream ids are 31 bits and never reused: a connection past this many requests is replaced
# (its queued requests still go out on it), long before the ids run out.
RETIRE_AFTER_STREAM_ID = 2**30
# How long close() waits for the server to see our GOAWAY and the socket to close.
CLOSE_GRACE_SECONDS = 2.0

# Outbound headers are built here from fixed lower-case names, so h2's generic normalising and
# checking of them (a chain of generators per header, about half of its send_headers CPU) is
# switched off; what the server sends is still checked.
_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                    validate_outbound_headers=False,
                                    normalize_outbound_headers=False)


class H2Error(Exception):
    """Base of this module's errors; the message is short and safe to log."""


class H2ConnectError(H2Error):
    """Raised when no connection could be made (or the client is closed): nothing was sent."""


class H2TimeoutError(H2Error):
    """Raised when the connection, a free stream or the answer did not come in time."""


class H2StreamError(H2Error):
    """Raised when a stream fails before its answer: reset by the server, connection lost."""


class H2UnprocessedError(H2StreamError):
    """Raised when the server certainly did not process the request (GOAWAY above its last
    stream id, REFUSED_STREAM, or never sent), so sending it again cannot duplicate it."""


@dataclass(frozen=True, slots=True)
class H2Response:
    """A complete answer. ``headers`` has lower-case names and no pseudo-headers."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class H2Client:
    """Requests to one origin over one HTTP/2 connection, made lazily and remade when lost."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None,
                 connect_timeout: float) -> None:
        """``ssl_context`` verifies ``https://`` servers (ALPN ``h2`` is set on it); unused for
        ``http://``. ``connect_timeout`` bounds TCP, TLS and the server's first SETTINGS."""
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl_context if url.scheme == "https" else None
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])
        authority = url.netloc.rpartition("@")[2]
        self._prefix: list[Header] = [(b":scheme", url.scheme.encode()),
                                      (b":authority", authority.encode("idna"))]
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._connections: set[_Connection] = set()  # the current one and any still draining
        self._closed = False

    async def request(self, method: str, path: str, headers: Iterable[tuple[str, str]],
                      body: bytes = b"", *, timeout: float) -> H2Response:
        """Send one request and return the whole answer, whatever its status.

        ``timeout`` counts from now and covers waiting for a free stream and for the answer
        (connecting has its own ``connect_timeout``). Raises :class:`H2Error` subclasses only.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        connection = self._connection
        if connection is None or not connection.accepting:
            connection = await self._connect()
        request_headers = [(b":method", method.encode()), *self._prefix,
                           (b":path", path.encode())]
        request_headers += [(name.encode(), value.encode()) for name, value in headers]
        return await connection.request(request_headers, body, deadline)

    async def _connect(self) -> _Connection:
        if self._closed:
            raise H2ConnectError("the client is closed")
        connecting = self._connecting
        if connecting is None:
            # One connection attempt at a time, shared by every request that needs it; the
            # shield keeps one impatient request from cancelling it for the others.
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connected)
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if connecting.cancelled() and current is not None and not current.cancelling():
                raise H2ConnectError("the client was closed while connecting") from None
            raise

    def _connected(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, tls=self._ssl is not None, on_lost=self._lost,
                                 ping_timeout=self._connect_timeout)
        self._connections.add(connection)
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: connection, self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
                problem = await connection.ready
        except TimeoutError:
            connection.abort()
            raise H2TimeoutError(
                f"no HTTP/2 connection to {where} within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:  # refused, unreachable, DNS, TLS verification (ssl.SSLError)
            connection.abort()
            raise H2ConnectError(f"cannot connect to {where}: {exc}") from None
        except BaseException:
            connection.abort()
            raise
        if problem is not None:
            raise problem
        return connection

    def _lost(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if self._connection is connection:
            self._connection = None

    async def close(self) -> None:
        """Fail what is in flight, say GOAWAY and close every connection."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=CLOSE_GRACE_SECONDS)
        for connection in connections:
            if not connection.lost.done():
                connection.abort()
                await asyncio.wait([connection.lost], timeout=CLOSE_GRACE_SECONDS)
        self._connection = None


class _Exchange:
    """One request on its way: what to send, how much of the body went, what came back."""

    __slots__ = ("body", "data", "future", "headers", "opened_at", "response_headers", "sent",
                 "status", "stream_id")

    def __init__(self, headers: list[Header], body: bytes,
                 future: asyncio.Future[H2Response]) -> None:
        self.headers = headers
        self.body = body
        self.sent = 0
        self.future = future
        self.stream_id = 0  # 0 while it waits for a free stream
        self.opened_at = 0.0  # loop time its stream was opened
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.data = b""

    def fail(self, error: H2Error) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class LiteralHpackEncoder:
    """An HPACK encoder that never uses the dynamic table and never Huffman-codes.

    The ``hpack`` library's encoder is pure Python: its Huffman coding and dynamic-table search
    cost about 13 times the CPU of this one for an APNs request's headers (measured: 155 µs
    against 12). The price is bytes: ~410 bytes of headers per request instead of ~250 (h2
    never indexes the provider token either, so it is sent every time in both cases).
    Every field is a literal with an indexed name where the static table has the name (never
    indexed for credentials, RFC 7541 §6.2.3), or an indexed field on a full static match.
    With nothing ever inserted, our side of the table cannot drift from the server's; its size
    is set to 0 at the start of the first block and again after every SETTINGS_HEADER_TABLE_SIZE
    (RFC 7541 §4.2). ``h2`` calls :meth:`encode` and sets :attr:`header_table_size`.
    """

    _SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})

    def __init__(self) -> None:
        self._size_update_due = True
        self._table_size = 4096

    @property
    def header_table_size(self) -> int:
        """The server's SETTINGS_HEADER_TABLE_SIZE; we use none of it."""
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self._size_update_due = True

    def encode(self, headers: Iterable[Header]) -> bytes:
        """One header block for ``headers`` (bytes pairs, lower-case names, pseudo first)."""
        parts = [b"\x20"] if self._size_update_due else []  # dynamic table size update: 0
        self._size_update_due = False
        static = HeaderTable.STATIC_TABLE_MAPPING
        for name, value in headers:
            known = static.get(name)
            if known is None:  # literal, new name: 0x00, name, value
                parts += (b"\x00", _hpack_integer(len(name), 7, 0), name)
            else:
                full_match = known[1].get(value)
                if full_match is not None:
                    parts.append(_hpack_integer(full_match, 7, 0x80))
                    continue
                never_indexed = 0x10 if name in self._SENSITIVE else 0x00
                parts.append(_hpack_integer(known[0], 4, never_indexed))
            parts += (_hpack_integer(len(value), 7, 0), value)
        return b"".join(parts)


def _hpack_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 §5.1: ``value`` in an N-bit prefix (with ``flags`` above it), then 7-bit groups."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _ClientH2Connection(h2.connection.H2Connection):
    """``h2``'s connection, fitted for one client multiplexing hundreds of streams.

    Three changes: the :class:`LiteralHpackEncoder`; no recount of open streams before every
    new one; and a GOAWAY leaves the streams it spares alive.
    """

    def __init__(self) -> None:
        super().__init__(_CONFIG)
        self.encoder = LiteralHpackEncoder()  # type: ignore[assignment]
        self._sweep_at = 64
        # h2's default SETTINGS, but no server push: we would only have to refuse it.
        codes = h2.settings.SettingCodes
        settings = {codes(code): value for code, value in self.local_settings.items()}
        settings[codes.ENABLE_PUSH] = 0
        self.local_settings = h2.settings.Settings(client=True, initial_values=settings)

    @property
    def open_outbound_streams(self) -> int:
        """0: :class:`_Connection` keeps to the server's limit itself.

        h2 asks this before opening each stream and answers by walking every stream it holds
        (forgetting the closed ones as it goes): O(open streams) per request: ~20 µs with 100
        open, where the rest of send_headers takes ~50. So walk only when the stream table has
        doubled, which keeps it bounded, and skip h2's (redundant) limit check.
        """
        if len(self.streams) >= self._sweep_at:
            self._open_streams(1)  # client-initiated streams have odd ids
            self._sweep_at = 2 * len(self.streams) + 64
        return 0

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[
        h2.events.Event
    ]]:
        # h2 moves the whole connection to CLOSED on GOAWAY (python-hyper/h2#1181), so the
        # answers to streams the server still means to finish (RFC 9113 §6.8) would be protocol
        # errors. We open no stream after a GOAWAY, so staying in the open state is safe.
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if state is not h2.connection.ConnectionState.CLOSED:
            self.state_machine.state = state
        return frames, events


class _Connection(asyncio.Protocol):
    """One TCP connection and its ``h2`` state; every stream on it and the queue for more."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, tls: bool,
                 on_lost: Callable[[_Connection], None], ping_timeout: float) -> None:
        self._loop = loop
        self._tls = tls
        self._on_lost = on_lost
        self._ping_timeout = ping_timeout
        self._ping: asyncio.TimerHandle | None = None  # a liveness PING awaiting its ACK
        self._last_heard = loop.time()  # when the server last sent anything
        self._h2 = _ClientH2Connection()
        self._transport: asyncio.Transport | None = None
        # None once the server's first SETTINGS arrives, or why the connection is unusable.
        self.ready: asyncio.Future[H2Error | None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.accepting = True  # False once lost, closing, told GOAWAY or retired
        self._goaway = False
        self._max_streams = 0  # no stream before the server's SETTINGS says how many
        self._streams: dict[int, _Exchange] = {}
        self._queue: deque[_Exchange] = deque()  # waiting for a free stream
        self._blocked: dict[int, _Exchange] = {}  # body waiting for send window
        self._flush_scheduled = False

    # --- requests ------------------------------------------------------------------------------

    async def request(self, headers: list[Header], body: bytes, deadline: float) -> H2Response:
        """Send on a new stream (or wait for one) and await the answer until ``deadline``."""
        if not self.accepting:
            raise H2UnprocessedError("the connection closed before the request was sent")
        exchange = _Exchange(headers, body, self._loop.create_future())
        timer = self._loop.call_at(deadline, self._expire, exchange)
        if not self._queue and len(self._streams) < self._max_streams:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            self._start_queued()
        try:
            return await exchange.future
        except asyncio.CancelledError:
            self._drop(exchange)
            raise
        finally:
            timer.cancel()

    def _start(self, exchange: _Exchange) -> None:
        h2c = self._h2
        try:
            stream_id = h2c.get_next_available_stream_id()
            h2c.send_headers(stream_id, exchange.headers, end_stream=not exchange.body)
        except h2.exceptions.H2Error as exc:
            # Not expected (we keep to the limits); a connection in a state we did not foresee
            # gets no new requests, and closes once the ones on it are done.
            self._retire()
            exchange.fail(H2UnprocessedError(f"could not open a stream: {exc}"))
            return
        exchange.stream_id = stream_id
        exchange.opened_at = self._loop.time()
        self._streams[stream_id] = exchange
        if exchange.body:
            self._send_body(exchange)
        if stream_id >= RETIRE_AFTER_STREAM_ID:
            self._retire()
        self._schedule_flush()

    def _start_queued(self) -> None:
        queue = self._queue
        while queue and len(self._streams) < self._max_streams:
            exchange = queue.popleft()
            if not exchange.future.done():  # else it timed out or was cancelled while waiting
                self._start(exchange)

    def _send_body(self, exchange: _Exchange) -> None:
        h2c, stream_id, body = self._h2, exchange.stream_id, exchange.body
        try:
            while exchange.sent < len(body):
                size = min(h2c.local_flow_control_window(stream_id),
                           h2c.max_outbound_frame_size, len(body) - exchange.sent)
                if size <= 0:
                    self._blocked[stream_id] = exchange
                    return
                end = exchange.sent + size
                h2c.send_data(stream_id, body[exchange.sent:end], end_stream=end == len(body))
                exchange.sent = end
        except h2.exceptions.H2Error:
            pass  # the stream closed meanwhile; its StreamReset event settles the exchange
        self._blocked.pop(stream_id, None)

    def _expire(self, exchange: _Exchange) -> None:
        if exchange.future.done():
            return
        if exchange.stream_id:
            self._drop(exchange)
            exchange.fail(H2TimeoutError(f"no answer in time; stream {exchange.stream_id} reset"))
            if self._last_heard < exchange.opened_at:
                self._check_alive()
        else:  # still queued: _start_queued skips it
            exchange.fail(H2TimeoutError("no free stream in time (server's concurrency limit)"))

    def _drop(self, exchange: _Exchange) -> None:
        """Abandon an open stream: RST_STREAM CANCEL, and its slot goes to the next request."""
        if self._streams.get(exchange.stream_id) is exchange:
            self._forget(exchange.stream_id)
            self._reset(exchange.stream_id)
            self._stream_closed()

    def _forget(self, stream_id: int) -> _Exchange | None:
        self._blocked.pop(stream_id, None)
        return self._streams.pop(stream_id, None)

    def _reset(self, stream_id: int) -> None:
        try:
            self._h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            return  # already closed on h2's side
        self._schedule_flush()

    def _check_alive(self) -> None:
        """PING the server; drop the connection if the ACK does not come in time."""
        if self._ping is not None or self._transport is None or self._transport.is_closing():
            return
        try:
            self._h2.ping(b"liveness")
        except h2.exceptions.H2Error:
            return  # closing anyway
        self._schedule_flush()
        self._ping = self._loop.call_later(self._ping_timeout, self._ping_unanswered)

    def _ping_unanswered(self) -> None:
        self._ping = None
        self.accepting = False
        self._fail_all(H2StreamError(
            f"connection presumed dead: no answer to a PING in {self._ping_timeout:g} s"
        ))
        self.abort()

    def _stream_closed(self) -> None:
        if self._queue and not self._goaway:
            self._start_queued()
        if not self.accepting and not self._streams and not self._queue:
            self._shutdown()

    # --- what the server sends -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Check ALPN on TLS, then send the preface and our SETTINGS."""
        self._transport = cast(asyncio.Transport, transport)
        if self._tls:
            tls = transport.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "h2":
                self._not_ready(H2ConnectError("the server did not agree to HTTP/2 (ALPN h2)"))
                self._transport.abort()
                return
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Feed ``h2`` and act on its events; write whatever it has to say back at once."""
        self._last_heard = self._loop.time()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.H2Error as exc:  # h2 has queued a GOAWAY saying why
            self._fail_all(H2StreamError(f"HTTP/2 protocol error: {exc}"))
            self._shutdown()
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self._on_response(event)
            elif isinstance(event, h2.events.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_stream_ended(event)
            elif isinstance(event, h2.events.StreamReset):
                self._on_stream_reset(event)
            elif isinstance(event, h2.events.WindowUpdated):
                self._on_window_updated(event)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._on_settings()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._on_goaway(event)
            elif isinstance(event, h2.events.PingAckReceived) and self._ping is not None:
                self._ping.cancel()
                self._ping = None
        self._flush()

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        exchange = self._streams.get(event.stream_id or 0)
        if exchange is None:
            return
        headers = exchange.response_headers
        for name, value in cast(list[Header], event.headers or []):
            if name == b":status":
                exchange.status = int(value) if value.isdigit() else 0
            else:
                headers[name.decode("ascii", "replace")] = value.decode("utf-8", "replace")

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id or 0
        # Give the window back at once: the answer is read whole, nothing waits on a reader.
        self._h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        exchange = self._streams.get(stream_id)
        if exchange is not None:
            exchange.data += event.data or b""

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        exchange = self._forget(event.stream_id or 0)
        if exchange is None:
            return
        if exchange.sent < len(exchange.body):  # answered before the body was all sent
            self._reset(exchange.stream_id)
        if not exchange.status:
            exchange.fail(H2StreamError(f"stream {exchange.stream_id} ended without a status"))
        elif not exchange.future.done():
            exchange.future.set_result(
                H2Response(exchange.status, exchange.response_headers, exchange.data)
            )
        self._stream_closed()

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        stream_id = event.stream_id or 0
        exchange = self._forget(stream_id)
        if exchange is None:
            return
        code = _code_name(event.error_code)
        if event.error_code == ErrorCodes.REFUSED_STREAM:
            exchange.fail(H2UnprocessedError(f"the server refused stream {stream_id} ({code})"))
        else:
            exchange.fail(H2StreamError(f"the server reset stream {stream_id} ({code})"))
        self._stream_closed()

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            exchange = self._blocked.get(event.stream_id)
            waiting = [exchange] if exchange is not None else []
        else:  # the connection window: any blocked stream may go on
            waiting = list(self._blocked.values())
        for exchange in waiting:
            self._send_body(exchange)

    def _on_settings(self) -> None:
        self._max_streams = self._h2.remote_settings.max_concurrent_streams
        if not self.ready.done():
            self.ready.set_result(None)
        # A new INITIAL_WINDOW_SIZE changes every stream's send window.
        for exchange in list(self._blocked.values()):
            self._send_body(exchange)
        if not self._goaway:
            self._start_queued()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.accepting = False
        self._goaway = True
        last = event.last_stream_id or 0
        why = f"GOAWAY {_code_name(event.error_code)}"
        if event.additional_data:
            why += f" {event.additional_data[:200].decode('utf-8', 'replace')}"
        for stream_id in [s for s in self._streams if s > last]:
            exchange = self._forget(stream_id)
            if exchange is not None:
                exchange.fail(H2UnprocessedError(f"{why}: stream {stream_id} not processed"))
        while self._queue:
            self._queue.popleft().fail(H2UnprocessedError(f"{why}: request not sent"))
        self._not_ready(H2ConnectError(f"the server said {why}"))
        if not self._streams:
            self._shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever is still waiting, and tell the client to connect anew next time."""
        self.accepting = False
        if self._ping is not None:
            self._ping.cancel()
        because = f": {exc}" if exc else ""
        self._fail_all(H2StreamError(f"connection lost{because}"))
        self._not_ready(H2ConnectError(f"connection closed during the HTTP/2 preface{because}"))
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    # --- the connection as a whole -------------------------------------------------------------

    def close(self) -> None:
        """Fail what is in flight and close politely: GOAWAY, then FIN once it is written."""
        self.accepting = False
        self._fail_all(H2StreamError("the client closed the connection"))
        self._shutdown()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()
        elif not self.lost.done():  # never connected: nothing will call connection_lost
            self.connection_lost(None)

    def _retire(self) -> None:
        self.accepting = False
        if not self._streams and not self._queue:
            self._shutdown()

    def _shutdown(self) -> None:
        self.accepting = False
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._h2.close_connection()
        except h2.exceptions.H2Error:
            pass  # already closed on h2's side: just close the socket
        self._flush()
        self._transport.close()

    def _fail_all(self, error: H2StreamError) -> None:
        streams, self._streams, self._blocked = self._streams, {}, {}
        for exchange in streams.values():
            exchange.fail(type(error)(*error.args))
        while self._queue:
            self._queue.popleft().fail(H2UnprocessedError(f"{error}; request not sent"))

    def _not_ready(self, problem: H2Error) -> None:
        if not self.ready.done():
            self.ready.set_result(problem)

    def _schedule_flush(self) -> None:
        # Requests started in the same loop turn share one write (one syscall, fewer packets).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _code_name(code: ErrorCodes | int | None) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return f"error code {code}"
