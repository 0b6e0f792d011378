"""Client CPU per SMS-shaped HTTP/1.1 request: the aiohttp client we had against ``http11``.

The server (an aiohttp app answering a Twilio-shaped 201 with a small JSON body) runs in a
child process, so this process's CPU time (``getrusage``: user + system, the sum being
``time.process_time()``) is the client's only: the request helper, the event loop (uvloop) and
the kernel's socket work on our side. An idle baseline (the same wall time asleep in the same
loop) is measured and subtracted.

Each round sends ``--requests`` requests from ``--concurrency`` tasks through one client
(``max_connections`` = the concurrency, as TwilioSender sets it), after a warm-up that opens
the kept-alive connections; the clients alternate rounds so drift on a shared machine hits
them alike, and the aiohttp/http11 ratio is given per pair of rounds as well. Each request is what ``TwilioSender.send`` makes: a form POST (To, From, Body,
StatusCallback) with Basic auth, the JSON answer parsed. The collector is set as the gateway
sets it (``gc.freeze()``, thresholds 20,000/20/50).

``floor`` is not a client but a lower bound for reference: a protocol that writes prepared
bytes and finds the answer by its known length, no parsing, no timeouts, no limits.

``python -m bench.http_micro [--requests 5000] [--concurrency 50] [--rounds 5] [--verbose]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from adapters.http import (
    FORM_CONTENT_TYPE,
    SUCCESS,
    HttpClient,
    HttpResponse,
    _basic_authorization,
    _json_or_none,
    encode_form,
    parse_retry_after,
)

ANSWER = orjson.dumps({
    "sid": "SM" + "0" * 32, "status": "queued", "to": "+15551230001", "from": "+15005550006",
    "body": "Your code is 123456", "num_segments": "1", "price": None, "error_code": None,
})
PATH = "/2010-04-01/Accounts/AC" + "0" * 32 + "/Messages.json"


# --- the server (child process) -------------------------------------------------------------------


def serve(pin: bool) -> None:
    """Answer every POST on PATH with 201 and ANSWER; print the port; stop when stdin closes."""
    import uvloop

    if pin:
        os.sched_setaffinity(0, {1})  # the client has CPU 0
    from aiohttp import web

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post(PATH, create)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        await runner.cleanup()

    uvloop.run(main())


# --- the clients ----------------------------------------------------------------------------------


class AiohttpClient:
    """HttpClient.request as it was before adapters/http11.py: the same work around aiohttp."""

    def __init__(self, max_connections: int) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=10),
            headers={"User-Agent": "messaging-gateway"},
        )
        self._headers: dict[tuple[str, str], Any] = {}

    def _fixed(self, basic_auth: tuple[str, str]) -> Mapping[str, str]:
        from multidict import CIMultiDict, CIMultiDictProxy

        headers = self._headers.get(basic_auth)  # what the lru_cache'd _fixed_headers kept
        if headers is None:
            headers = self._headers[basic_auth] = CIMultiDictProxy(CIMultiDict({
                "Authorization": _basic_authorization(*basic_auth),
                "Content-Type": FORM_CONTENT_TYPE,
            }))
        return headers

    async def request(self, method: str, url: str, *, data: bytes,
                      basic_auth: tuple[str, str]) -> HttpResponse:
        try:
            async with self._session.request(
                method, url, data=data, headers=self._fixed(basic_auth), allow_redirects=False
            ) as raw:
                content = await raw.read()
                status, response_headers = raw.status, raw.headers
        except (self._aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RuntimeError(f"transport error: {exc!r}") from None
        retry_after = response_headers.get("Retry-After")
        response = HttpResponse(
            status=status, headers=response_headers, json=_json_or_none(content),
            content=content,
            retry_after=None if retry_after is None else parse_retry_after(retry_after),
        )
        if status in SUCCESS:
            return response
        raise RuntimeError(f"refused: {status}")

    async def close(self) -> None:
        await self._session.close()


class CurrentClient:
    """The HttpClient of adapters/http.py as it is now."""

    def __init__(self, max_connections: int) -> None:
        self._http = HttpClient(name="bench", connect_timeout=10, read_timeout=10,
                                max_connections=max_connections)

    async def request(self, method: str, url: str, *, data: bytes,
                      basic_auth: tuple[str, str]) -> HttpResponse:
        return await self._http.request(method, url, data=data, basic_auth=basic_auth)

    async def close(self) -> None:
        await self._http.close()


class _FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.waiter: asyncio.Future[bytes] | None = None
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0 and len(self.buffer) >= end + 4 + len(ANSWER) and self.waiter is not None:
            self.waiter.set_result(self.buffer[end + 4:])
            self.buffer, self.waiter = b"", None


class FloorClient:
    """A lower bound, not a client: precomputed request bytes, the answer found by its known
    length, no parsing, no timeout; what the loop, the sockets and a future cost."""

    def __init__(self, max_connections: int) -> None:
        self._idle: list[_FloorProtocol] = []
        self._head = b""

    async def request(self, method: str, url: str, *, data: bytes,
                      basic_auth: tuple[str, str]) -> HttpResponse:
        if self._idle:
            protocol = self._idle.pop()
        else:
            port = int(url.split(":")[2].split("/")[0])
            _, protocol = await asyncio.get_running_loop().create_connection(
                _FloorProtocol, "127.0.0.1", port)
            self._head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Authorization: {_basic_authorization(*basic_auth)}\r\n"
                          f"Content-Type: {FORM_CONTENT_TYPE}\r\n").encode()
        waiter = protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(self._head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        body = await waiter
        self._idle.append(protocol)
        return HttpResponse(status=201, headers={}, json=orjson.loads(body), retry_after=None)

    async def close(self) -> None:
        for protocol in self._idle:
            protocol.transport.close()


CLIENTS: dict[str, Callable[[int], Any]] = {
    "aiohttp": AiohttpClient, "http11": CurrentClient, "floor": FloorClient,
}


# --- the measurement ------------------------------------------------------------------------------


# The bodies TwilioSender.send would make, encoded ahead: the sender's work, not the client's.
CALLBACK = b"&" + encode_form({"StatusCallback": "https://gw.example.com/v1/status/twilio"})
FORMS = [encode_form((("To", f"+1555{n:07d}"), ("From", "+15005550006"),
                      ("Body", "Your code is 123456"))) + CALLBACK for n in range(1000)]
AUTH = ("AC" + "0" * 32, "token-" + "x" * 26)


async def _drive(client: Any, url: str, requests: int, concurrency: int) -> None:
    left = requests

    async def worker(n: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            form = FORMS[left % len(FORMS)]
            response = await client.request("POST", url, data=form, basic_auth=AUTH)
            assert response.status == 201 and response.json["sid"], response

    await asyncio.gather(*(worker(n) for n in range(concurrency)))


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _round(name: str, url: str, requests: int,
                 concurrency: int) -> tuple[float, float, float]:
    """µs per request: client CPU (idle-corrected), of it in the kernel, and wall time."""
    client = CLIENTS[name](concurrency)
    try:
        await _drive(client, url, concurrency * 4, concurrency)  # connect, warm caches
        gc.collect()
        (user, system), wall = _cpu(), time.perf_counter()
        await _drive(client, url, requests, concurrency)
        (user_end, system_end), wall = _cpu(), time.perf_counter() - wall
    finally:
        await client.close()
    idle_user, idle_system = _cpu()
    await asyncio.sleep(wall)  # the loop asleep for as long: its own cost, subtracted
    idle_user, idle_system = (a - b for a, b in zip(_cpu(), (idle_user, idle_system)))
    user, system = user_end - user - idle_user, system_end - system - idle_system
    return (user + system) / requests * 1e6, system / requests * 1e6, wall / requests * 1e6


async def measure(requests: int, concurrency: int, rounds: int, clients: list[str],
                  verbose: bool = False, pin: bool = False) -> None:
    server = subprocess.Popen([sys.executable, "-m", "bench.http_micro", "--serve"]
                              + (["--pin"] if pin else []),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}{PATH}"
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
        for _ in range(rounds):
            for name in clients:
                results[name].append(await _round(name, url, requests, concurrency))
                if verbose:
                    print(f"  {name:<8}" + "  ".join(f"{v:6.1f}" for v in results[name][-1]),
                          flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    print(f"{requests} requests/round, {concurrency} concurrent, {rounds} rounds; µs per "
          "request: client CPU (idle loop subtracted) median [min-max], of it kernel, wall")
    for name, rows in results.items():
        cpu = [r[0] for r in rows]
        system = statistics.median(r[1] for r in rows)
        wall = statistics.median(r[2] for r in rows)
        print(f"  {name:<8} {statistics.median(cpu):6.1f} CPU [{min(cpu):.1f}-{max(cpu):.1f}]"
              f"  {system:5.1f} kernel  {wall:6.1f} wall")
    if "aiohttp" in results and "http11" in results:
        # Rounds alternate, so each pair saw much the same machine: their ratio is steadier.
        ratios = [old[0] / new[0] for old, new in zip(results["aiohttp"], results["http11"])]
        print(f"  aiohttp / http11 CPU, per pair of rounds: median {statistics.median(ratios):.2f}"
              f" [{min(ratios):.2f}-{max(ratios):.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--pin", action="store_true",
                        help="client on CPU 0, server on CPU 1 (steadier on a 2-CPU machine)")
    parser.add_argument("--clients", default="aiohttp,http11,floor",
                        help="floor: a lower bound (no HTTP parsing) for reference")
    args = parser.parse_args()
    if args.serve:
        serve(args.pin)
        return
    if args.pin:
        os.sched_setaffinity(0, {0})
    import uvloop

    # The collector as the gateway sets it (gateway/cli.py): what the client costs in production.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    uvloop.run(measure(args.requests, args.concurrency, args.rounds, args.clients.split(","),
                      args.verbose, args.pin))


if __name__ == "__main__":
    main()
