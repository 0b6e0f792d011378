"""The lean HTTP/1.1 client (adapters/http11.py) against real local servers, no mocks.

Two kinds of server, both on 127.0.0.1 and a free port: an aiohttp app for ordinary HTTP, and
:class:`RawServer` (``asyncio.start_server``) that writes exact bytes for wire-level cases. Every
test runs twice: on the standard asyncio loop and on uvloop (what the gateway runs on), whose
transports behave differently at the edges (closing, aborting, writing to a closed handle).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from aiohttp import web

from adapters.errors import TransientSendError
from adapters.http import HttpClient
from adapters.http11 import (
    ClientClosedError,
    ConnectionLostError,
    Http11Client,
    Http11TimeoutError,
    InvalidUrlError,
    MalformedResponseError,
    encode_headers,
)

T = TypeVar("T")
Scenario = Callable[[], Awaitable[Any]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(params=["asyncio", "uvloop"])
def on_loop(request: pytest.FixtureRequest) -> Callable[[Scenario], Awaitable[Any]]:
    """Run a scenario (servers, client and all) on the test's loop, or on a uvloop of its own."""

    async def run(scenario: Scenario) -> Any:
        if request.param == "asyncio":
            return await scenario()
        return await asyncio.to_thread(uvloop.run, scenario())

    return run


@contextlib.asynccontextmanager
async def client(**options: Any) -> AsyncIterator[Http11Client]:
    """An Http11Client with short timeouts, closed at the end."""
    settings: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0, **options}
    http = Http11Client(**settings)
    try:
        yield http
    finally:
        await http.close()


# --- servers --------------------------------------------------------------------------------------


class Peer:
    """One connection to a RawServer, from the server's side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_request(self) -> bytes:
        """One whole request (head and Content-Length body), as it came."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(match[1])) if match else b""
        return head + body

    async def write(self, *parts: bytes, pause: float = 0.0) -> None:
        """Write ``parts`` one by one (``pause`` seconds apart, so they arrive apart)."""
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def closed_by_client(self) -> bool:
        """True once the client closes its side (EOF or reset) within a second."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 1.0) == b""
        except ConnectionError:
            return True


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """``asyncio.start_server`` running ``handler`` per connection; counts connections.

    ``connections`` is how many were accepted, ``peak`` the most open at once, ``requests`` the
    requests handlers read with :meth:`Peer.read_request`, in order.
    """

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        peer = Peer(reader, writer)
        original = peer.read_request

        async def recorded() -> bytes:
            request = await original()
            self.requests.append(request)
            return request

        peer.read_request = recorded  # type: ignore[method-assign]
        try:
            await self._handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


def answering(*responses: bytes, then_close: bool = False) -> Handler:
    """A handler that reads a request and writes the next of ``responses``, for each request."""

    async def handler(peer: Peer) -> None:
        for response in responses:
            await peer.read_request()
            await peer.write(response)
        if not then_close:
            await peer.reader.read()  # until the client closes

    return handler


def keep_answering(response: bytes = OK) -> Handler:
    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await peer.write(response)

    return handler


@contextlib.asynccontextmanager
async def aiohttp_server(
    routes: web.RouteTableDef, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, set[Any]]]:
    """An aiohttp app; yields its base URL and the set of client ports it saw (= connections)."""
    peers: set[Any] = set()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        return await handler(request)  # type: ignore[no-any-return]

    app = web.Application(middlewares=[count])
    app.add_routes(routes)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{'https' if ssl_context else 'http'}://{host}:{port}", peers
    finally:
        await runner.cleanup()


def echo_routes() -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.route("*", "/{tail:.*}")
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.raw_path,
                                  "body": body.decode(),
                                  "agent": request.headers.get("User-Agent")})

    return routes


# --- requests as sent -----------------------------------------------------------------------------


async def test_a_request_is_one_write_with_host_agent_length_and_the_callers_headers(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Exact bytes: request line, Host with port, User-Agent, caller's headers, Content-Length."""

    async def scenario() -> list[bytes]:
        async with RawServer(keep_answering()) as server, client() as http:
            port = server.url.rsplit(":", 1)[1]
            await http.request("POST", f"{server.url}/a b?q=é", body=b"x=1",
                               header_block=encode_headers({"X-Trace": "7"}))
            await http.request("POST", f"{server.url}/empty")
            await http.request("GET", f"{server.url}/")
            return [request.replace(port.encode(), b"PORT") for request in server.requests]

    assert await on_loop(scenario) == [
        b"POST /a%20b?q=%C3%A9 HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n"
        b"User-Agent: messaging-gateway\r\nX-Trace: 7\r\nContent-Length: 3\r\n\r\nx=1",
        b"POST /empty HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n"
        b"User-Agent: messaging-gateway\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nUser-Agent: messaging-gateway\r\n\r\n",
    ]


def test_headers_that_could_forge_others_are_refused() -> None:
    """CR or LF in a value, a bad name, or a header the client writes is a ValueError."""
    for headers in ({"X-A": "1\r\nX-Evil: 1"}, {"X-A": "1\nX"}, {"Bad Name": "1"}, {"": "1"},
                    {"content-length": "5"}, {"Host": "elsewhere"}):
        with pytest.raises(ValueError):
            encode_headers(headers)
    assert encode_headers([("A", "1"), ("A", "é")]) == "A: 1\r\nA: é\r\n".encode()


async def test_bad_urls_are_invalid_url_errors(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Unparseable, other schemes, no host, credentials: InvalidUrlError, before any connection."""

    async def scenario() -> list[str]:
        messages = []
        async with client() as http:
            for url in ("http://[::1", "ftp://127.0.0.1/x", "http:///x", "mailto:a@b",
                        "http://user:pw@127.0.0.1/", "http://127.0.0.1:99999/"):
                with pytest.raises(InvalidUrlError) as caught:
                    await http.request("GET", url)
                messages.append(str(caught.value))
        return messages

    messages = await on_loop(scenario)
    assert all(message.startswith("invalid URL") for message in messages)
    assert "pw" not in messages[4]


# --- connections: reuse and closing ---------------------------------------------------------------


async def test_sequential_requests_reuse_one_kept_alive_connection(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Five requests one after the other: the server sees one connection."""

    async def scenario() -> tuple[list[Any], int]:
        async with aiohttp_server(echo_routes()) as (url, peers), client() as http:
            answers = []
            for n in range(5):
                response = await http.request("POST", f"{url}/n/{n}", body=b"hello")
                answers.append((response.status, response.body))
            return answers, len(peers)

    answers, connections = await on_loop(scenario)
    assert connections == 1
    assert [status for status, _ in answers] == [200] * 5
    assert b'"path": "/n/4"' in answers[4][1] and b'"body": "hello"' in answers[4][1]


async def test_connection_close_is_honoured(on_loop: Callable[[Scenario], Awaitable[Any]]) -> None:
    """After Connection: close (the server keeping its side open), the next request reconnects,
    and the client closes the used connection."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(answer)
        closed.append(await peer.closed_by_client())

    closed: list[bool] = []

    async def scenario() -> int:
        async with RawServer(handler) as server, client() as http:
            for _ in range(2):
                assert (await http.request("GET", server.url)).body == b"ok"
            await asyncio.sleep(0.1)
            return server.connections

    assert await on_loop(scenario) == 2
    assert closed == [True, True]


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),  # bytes past the answer
        (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", True),  # no reason phrase: fine
    ],
)
async def test_http_1_0_and_stray_bytes_decide_reuse(
    on_loop: Callable[[Scenario], Awaitable[Any]], answer: bytes, reused: bool
) -> None:
    """HTTP/1.0 is kept alive only when it says so; bytes after an answer end the connection."""

    async def scenario() -> int:
        async with RawServer(keep_answering(answer)) as server, client() as http:
            for _ in range(2):
                assert (await http.request("GET", server.url)).body == b"ok"
            return server.connections

    assert await on_loop(scenario) == (1 if reused else 2)


async def test_an_idle_connection_closed_by_the_server_is_not_reused(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """The server closes the kept-alive connection while it is idle: the next request gets a new
    connection and succeeds."""

    async def scenario() -> tuple[int, int]:
        async with RawServer(answering(OK, then_close=True)) as server, client() as http:
            assert (await http.request("GET", server.url)).body == b"ok"
            await asyncio.sleep(0.1)  # the close arrives while the connection is idle
            # Out of the pool as soon as noticed (not left to the retry of a failed write).
            assert not any(http._idle.values())
            assert (await http.request("GET", server.url)).body == b"ok"
            return server.connections, len(server.requests)

    assert await on_loop(scenario) == (2, 2)


async def test_a_reused_connection_closed_as_we_write_is_retried_once_on_a_new_one(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """The server reads the second request on a kept-alive connection and closes without a
    byte of answer (an idle timeout racing our write): sent again on a new connection."""

    async def handler(peer: Peer) -> None:
        if server.connections == 1:
            await peer.read_request()
            await peer.write(OK)
            await peer.read_request()
            return  # closed, unanswered
        await keep_answering()(peer)

    server = RawServer(handler)

    async def scenario() -> tuple[int, int]:
        async with server, client() as http:
            assert (await http.request("POST", server.url, body=b"1")).body == b"ok"
            assert (await http.request("POST", server.url, body=b"2")).body == b"ok"
            return server.connections, len(server.requests)

    assert await on_loop(scenario) == (2, 3)


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok"])
async def test_a_new_connection_closed_before_the_answer_is_not_retried(
    on_loop: Callable[[Scenario], Awaitable[Any]], partial: bytes
) -> None:
    """On a fresh connection, or once part of the answer came, a close is an error: no retry."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(partial)

    async def scenario() -> int:
        async with RawServer(handler) as server, client() as http:
            with pytest.raises(ConnectionLostError):
                await http.request("POST", server.url, body=b"1")
            return len(server.requests)

    assert await on_loop(scenario) == 1


async def test_keepalive_seconds_retires_old_idle_connections(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """An idle connection older than keepalive_seconds is closed, not used."""

    async def scenario() -> int:
        async with RawServer(keep_answering()) as server, client(keepalive_seconds=0.05) as http:
            await http.request("GET", server.url)
            await http.request("GET", server.url)  # at once: reused
            await asyncio.sleep(0.1)
            await http.request("GET", server.url)  # too old: a new connection
            return server.connections

    assert await on_loop(scenario) == 2


# --- answers --------------------------------------------------------------------------------------


async def test_a_chunked_answer_in_pieces_with_extensions_and_trailers(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Chunks split across writes, a chunk extension, a trailer: the body is the chunks joined,
    the trailer is not a header, and the connection is reused."""
    pieces = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5\r\nhel",
              b"lo\r\n6;ext=1\r\n worl", b"d\r", b"\n0\r\nX-Trailer: t\r\n", b"\r\n")

    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await peer.write(*pieces, pause=0.01)

    async def scenario() -> tuple[list[Any], int]:
        async with RawServer(handler) as server, client() as http:
            responses = [await http.request("GET", server.url) for _ in range(2)]
            return [(r.status, r.body, r.headers.get("x-a"), r.headers.get("X-Trailer"))
                    for r in responses], server.connections

    answers, connections = await on_loop(scenario)
    assert answers == [(200, b"hello world", "1", None)] * 2
    assert connections == 1


async def test_an_answer_without_length_is_read_to_the_close(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """No Content-Length and no chunking: the body is everything until the server closes."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall ", b"of it",
                         pause=0.02)

    async def scenario() -> tuple[bytes, bytes, int]:
        async with RawServer(handler) as server, client() as http:
            first = await http.request("GET", server.url)
            second = await http.request("GET", server.url)
            return first.body, second.body, server.connections

    assert await on_loop(scenario) == (b"all of it", b"all of it", 2)


async def test_interim_answers_are_skipped(on_loop: Callable[[Scenario], Awaitable[Any]]) -> None:
    """100 Continue and 103 Early Hints before the answer: the answer is what is returned."""

    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await peer.write(b"HTTP/1.1 100 Continue\r\n\r\n",
                             b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, pause=0.01)

    async def scenario() -> tuple[list[tuple[int, bytes]], int]:
        async with RawServer(handler) as server, client() as http:
            responses = [await http.request("POST", server.url, body=b"x") for _ in range(2)]
            return [(r.status, r.body) for r in responses], server.connections

    assert await on_loop(scenario) == ([(200, b"ok"), (200, b"ok")], 1)


async def test_no_body_for_head_204_and_304(on_loop: Callable[[Scenario], Awaitable[Any]]) -> None:
    """HEAD, 204 and 304 answers end with their head whatever Content-Length says."""
    answers = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
               b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
               b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", OK)

    async def scenario() -> tuple[list[tuple[int, bytes]], int]:
        async with RawServer(answering(*answers)) as server, client() as http:
            responses = [await http.request("HEAD", server.url)]
            responses += [await http.request("GET", server.url) for _ in range(3)]
            return [(r.status, r.body) for r in responses], server.connections

    assert await on_loop(scenario) == ([(200, b""), (204, b""), (304, b""), (200, b"ok")], 1)


async def test_headers_are_case_insensitive_and_a_content_encoding_is_left_alone(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Repeated headers are all kept; no Accept-Encoding goes out, and a gzip body stays gzip."""
    answer = (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nSet-Cookie: a=1\r\n"
              b"Set-Cookie: b=2\r\nRetry-After:  7 \r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00")

    async def scenario() -> tuple[Any, ...]:
        async with RawServer(answering(answer)) as server, client() as http:
            response = await http.request("GET", server.url)
            return (response.body, response.headers.get("Content-Encoding"),
                    response.headers.getall("set-cookie"), response.headers.get("retry-after"),
                    server.requests[0])

    body, encoding, cookies, retry_after, request = await on_loop(scenario)
    assert (body, encoding, cookies, retry_after) == (b"\x1f\x8b\x08\x00", "gzip",
                                                      ["a=1", "b=2"], "7")
    assert b"accept-encoding" not in request.lower()


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200OK\r\n\r\n", "status line"),
        ("HTTP/1.1 ²00 OK\r\n\r\n".encode(), "status line"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n", "10 MiB"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "64 KiB"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ],
)
async def test_a_malformed_answer_is_an_error_and_ends_the_connection(
    on_loop: Callable[[Scenario], Awaitable[Any]], answer: bytes, complaint: str
) -> None:
    """Each malformed answer raises MalformedResponseError naming the fault; the connection is
    closed (the next request opens another)."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(answer if server.connections == 1 else OK)
        await peer.reader.read()

    server = RawServer(handler)

    async def scenario() -> tuple[str, int]:
        async with server, client() as http:
            with pytest.raises(MalformedResponseError) as caught:
                await http.request("GET", server.url)
            assert (await http.request("GET", server.url)).body == b"ok"
            return str(caught.value), server.connections

    message, connections = await on_loop(scenario)
    assert complaint in message
    assert connections == 2


async def test_a_body_over_the_limit_while_reading_to_the_close(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """A body read to the close stops at 10 MiB with an error, not an ever-growing buffer."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        for _ in range(11):
            await peer.write(b"x" * (1024 * 1024))

    async def scenario() -> str:
        async with RawServer(handler) as server, client() as http:
            with pytest.raises(MalformedResponseError) as caught:
                await http.request("GET", server.url)
            return str(caught.value)

    assert "10 MiB" in await on_loop(scenario)


# --- timeouts, cancellation, limits, close --------------------------------------------------------


async def test_a_read_timeout_closes_the_connection(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """No answer within read_timeout: Http11TimeoutError (a TimeoutError); that connection is
    closed by the client and the next request uses a new one."""
    closed: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        if server.connections == 1:
            closed.append(await peer.closed_by_client())  # never answers
            return
        await peer.write(OK)
        await peer.reader.read()

    server = RawServer(handler)

    async def scenario() -> tuple[str, int]:
        async with server, client(read_timeout=0.2) as http:
            started = asyncio.get_running_loop().time()
            with pytest.raises(TimeoutError) as caught:
                await http.request("GET", server.url)
            assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
            assert isinstance(caught.value, Http11TimeoutError)
            assert (await http.request("GET", server.url)).body == b"ok"
            return str(caught.value), server.connections

    message, connections = await on_loop(scenario)
    assert message == "no complete answer within 0.2 s"
    assert connections == 2
    assert closed == [True]


async def test_each_request_gets_its_own_full_read_timeout(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """On a kept-alive connection, a request started after an earlier one still has its whole
    read_timeout (the connection's timer, armed for the earlier deadline, is moved on), and
    times out once that has passed."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.write(OK)
        await peer.read_request()
        await peer.reader.read()  # the second is never answered

    async def scenario() -> float:
        async with RawServer(handler) as server, client(read_timeout=0.3) as http:
            loop = asyncio.get_running_loop()
            await http.request("GET", server.url)
            await asyncio.sleep(0.2)
            started = loop.time()
            with pytest.raises(Http11TimeoutError):
                await http.request("GET", server.url)
            return loop.time() - started

    assert 0.28 < await on_loop(scenario) < 0.6


async def test_a_connect_timeout(on_loop: Callable[[Scenario], Awaitable[Any]]) -> None:
    """A TLS handshake the server never answers: Http11TimeoutError after connect_timeout."""

    async def handler(peer: Peer) -> None:
        await peer.reader.read()  # takes the TCP connection, never speaks TLS

    async def scenario() -> str:
        async with RawServer(handler) as server, client(connect_timeout=0.2) as http:
            url = server.url.replace("http://", "https://")
            with pytest.raises(Http11TimeoutError) as caught:
                await http.request("GET", url)
            return str(caught.value)

    assert await on_loop(scenario) == "no connection within 0.2 s"


async def test_a_cancelled_request_closes_its_connection(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Cancelled while waiting for the answer: the connection is closed, never pooled, and a
    late answer on it is never read as the next request's."""
    closed: list[bool] = []

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        if server.connections == 1:
            closed.append(await peer.closed_by_client())
            return
        await peer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
        await peer.reader.read()

    server = RawServer(handler)

    async def scenario() -> tuple[bytes, int]:
        async with server, client() as http:
            task = asyncio.ensure_future(http.request("GET", server.url))
            while not server.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            response = await http.request("GET", server.url)
            return response.body, server.connections

    assert await on_loop(scenario) == (b"second", 2)
    assert closed == [True]


async def test_max_connections_bounds_concurrent_connections(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Twenty requests at once with max_connections=3: three connections, never more at once,
    and every request answered."""

    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await asyncio.sleep(0.02)
            await peer.write(OK)

    async def scenario() -> tuple[list[bytes], int, int]:
        async with RawServer(handler) as server, client(max_connections=3) as http:
            responses = await asyncio.gather(
                *(http.request("GET", server.url) for _ in range(20)))
            return [r.body for r in responses], server.peak, server.connections

    bodies, peak, connections = await on_loop(scenario)
    assert bodies == [b"ok"] * 20
    assert peak == 3
    assert connections == 3


async def test_max_connections_counts_idle_connections_to_other_origins(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """At the limit with an idle connection to another origin, that one is closed first."""

    async def scenario() -> tuple[int, int]:
        async with (RawServer(keep_answering()) as first, RawServer(keep_answering()) as second,
                    client(max_connections=1) as http):
            await http.request("GET", first.url)
            await http.request("GET", second.url)
            await asyncio.sleep(0.05)
            return first.open, second.open

    assert await on_loop(scenario) == (0, 1)


async def test_a_waiter_cancelled_in_the_queue_does_not_leak_its_slot(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """A request cancelled while waiting for a free slot leaves the limit as it was."""

    async def handler(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await asyncio.sleep(0.05)
            await peer.write(OK)

    async def scenario() -> tuple[list[bytes], int]:
        async with RawServer(handler) as server, client(max_connections=1) as http:
            first = asyncio.ensure_future(http.request("GET", server.url))
            queued = asyncio.ensure_future(http.request("GET", server.url))
            await asyncio.sleep(0.01)
            queued.cancel()
            rest = [asyncio.ensure_future(http.request("GET", server.url)) for _ in range(3)]
            bodies = [r.body for r in await asyncio.gather(first, *rest)]
            return bodies, server.peak

    assert await on_loop(scenario) == ([b"ok"] * 4, 1)


async def test_close_while_requests_run(on_loop: Callable[[Scenario], Awaitable[Any]]) -> None:
    """close() with a request under way: idle connections are closed at once, the running
    request still completes and its connection is closed after it; later requests are refused."""
    closed: list[bool] = []

    async def handler(peer: Peer) -> None:
        while True:
            try:
                await peer.read_request()
            except asyncio.IncompleteReadError:
                closed.append(True)
                return
            await asyncio.sleep(0.1)
            await peer.write(OK)

    async def scenario() -> tuple[int, bytes, int, int]:
        async with RawServer(handler) as server:
            http = Http11Client(connect_timeout=2, read_timeout=2)
            await asyncio.gather(*(http.request("GET", server.url) for _ in range(2)))
            running = asyncio.ensure_future(http.request("GET", server.url))  # one busy, one idle
            await asyncio.sleep(0.02)
            await http.close()
            await asyncio.sleep(0.02)
            closed_at_close = len(closed)
            response = await running
            with pytest.raises(ClientClosedError):
                await http.request("GET", server.url)
            await asyncio.sleep(0.05)
            return closed_at_close, response.body, len(closed), server.connections

    assert await on_loop(scenario) == (1, b"ok", 2, 2)


# --- TLS ------------------------------------------------------------------------------------------


async def test_https_with_sni_verification_and_reuse(
    on_loop: Callable[[Scenario], Awaitable[Any]], certificate: tuple[Path, Path]
) -> None:
    """https://localhost: the handshake carries SNI, the certificate is verified against the
    given context, and the TLS connection is kept alive across requests."""
    server_names: list[str | None] = []
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*certificate)

    def record_name(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        server_names.append(name)

    server_tls.sni_callback = record_name  # type: ignore[assignment]
    client_tls = ssl.create_default_context(cafile=str(certificate[0]))

    async def scenario() -> tuple[list[Any], int]:
        async with (aiohttp_server(echo_routes(), ssl_context=server_tls) as (url, peers),
                    client(ssl_context=client_tls) as http):
            url = url.replace("127.0.0.1", "localhost")
            answers = []
            for n in range(3):
                response = await http.request("POST", f"{url}/tls/{n}", body=b"secret")
                answers.append((response.status, response.body.count(b"secret")))
            return answers, len(peers)

    answers, connections = await on_loop(scenario)
    assert answers == [(200, 1)] * 3
    assert connections == 1
    assert server_names == ["localhost"]


async def test_https_refuses_a_certificate_it_cannot_verify(
    on_loop: Callable[[Scenario], Awaitable[Any]], certificate: tuple[Path, Path]
) -> None:
    """With the system trust store (HttpClient's), a self-signed certificate is refused: an
    SSL error, a TransientSendError through HttpClient; nothing is sent."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*certificate)

    async def scenario() -> tuple[str, int]:
        async with RawServer(keep_answering(), ssl_context=server_tls) as server:
            async with client() as http:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await http.request("GET", server.url)
            gateway = HttpClient(name="acme", connect_timeout=2, read_timeout=2)
            try:
                with pytest.raises(TransientSendError) as caught:
                    await gateway.request("POST", server.url, data={"a": "1"})
            finally:
                await gateway.close()
            return caught.value.reason, len(server.requests)

    reason, requests = await on_loop(scenario)
    assert reason.startswith("acme connection problem: SSLCertVerificationError")
    assert requests == 0


# --- through HttpClient ---------------------------------------------------------------------------


async def test_http_client_maps_every_transport_failure_to_transient(
    on_loop: Callable[[Scenario], Awaitable[Any]],
) -> None:
    """Through HttpClient: malformed answer, dropped connection, timeout, refused connection,
    bad URL are TransientSendError; a bad header is the caller's ValueError."""

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if b"/garbage" in request:
            await peer.write(b"garbage\r\n\r\n")
        elif b"/slow" in request:
            await asyncio.sleep(5)
        # /drop: close without answering

    async def scenario() -> list[str]:
        reasons = []
        async with RawServer(handler) as server:
            gateway = HttpClient(name="acme", connect_timeout=1, read_timeout=0.2)
            try:
                for url in (f"{server.url}/garbage", f"{server.url}/drop", f"{server.url}/slow",
                            "http://127.0.0.1:1/", "http://[::1"):
                    with pytest.raises(TransientSendError) as caught:
                        await gateway.request("POST", url, data={"a": "1"})
                    reasons.append(caught.value.reason)
                with pytest.raises(ValueError):
                    await gateway.request("POST", server.url, headers={"X": "a\r\nb"})
            finally:
                await gateway.close()
        return reasons

    garbage, drop, slow, refused, bad_url = await on_loop(scenario)
    assert garbage.startswith("acme connection problem: MalformedResponseError")
    assert drop.startswith("acme connection problem: ConnectionLostError")
    assert slow == "acme timed out (no complete answer within 0.2 s)"
    assert refused.startswith("acme connection problem: ConnectionRefusedError")
    assert bad_url.startswith("acme connection problem: InvalidUrlError: invalid URL")
