"""Fake providers for the benchmark, in one process on one uvloop event loop, loopback only.

- Twilio-style SMS: aiohttp, ``POST /2010-04-01/Accounts/{sid}/Messages.json``, answers 201 after
  a configurable delay (uniform between ``lo`` and ``hi`` ms; default 0-5 ms).
- SMTP: aiosmtpd's protocol served on this loop (no thread), accepts every message; offers
  PIPELINING, as real relays do.
- APNs: HTTP/2 cleartext (prior knowledge) with the ``h2`` library, answers 200 at once.
  Lean on purpose: it checks that a bearer token is present but does not verify its ES256
  signature (the tests' fake does that); the benchmark measures the gateway, not the fake.

Every accepted message is recorded once per message id with ``t0`` (the publisher's clock,
rendered into the message by the gateway: ``ref:<id> t0:<unix seconds>``) and the moment the fake
accepted it (``time.time()``, same host clock). A second acceptance of the same id is counted
as a duplicate. The control API (on the SMS port, under ``/_bench``) reads and resets this.

Run: ``python -m bench.fakes [--max-seconds S]``; it prints one JSON line with its ports, then
serves until SIGTERM/SIGINT, its parent's death (PR_SET_PDEATHSIG set by the parent) or
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import signal
import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP

_REF = re.compile(r"ref:([A-Za-z0-9_.\-]+)")
_T0 = re.compile(r"t0:(\d+\.\d+)")
_REF_B = re.compile(rb"ref:([A-Za-z0-9_.\-]+)")
_T0_B = re.compile(rb"t0:(\d+\.\d+)")
_PLAIN_ADDR = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                         r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.DOTALL)
_MSGID_B = re.compile(rb"(?im)^X-Gateway-Message-Id:\s*(\S+)")


class Channel:
    """What one fake provider accepted: first acceptance per id, duplicates, unparsable ones."""

    __slots__ = ("counts", "refs", "t0s", "ats", "duplicates", "unparsed")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.refs: list[str] = []
        self.t0s: list[float] = []
        self.ats: list[float] = []
        self.duplicates: list[str] = []
        self.unparsed = 0

    def record(self, ref: str | None, t0: float | None, at: float) -> None:
        if ref is None or t0 is None:
            self.unparsed += 1
            return
        seen = self.counts.get(ref, 0)
        self.counts[ref] = seen + 1
        if seen:
            self.duplicates.append(ref)
            return
        self.refs.append(ref)
        self.t0s.append(t0)
        self.ats.append(at)

    def summary(self) -> dict[str, Any]:
        return {"accepted": len(self.refs), "duplicates": len(self.duplicates),
                "unparsed": self.unparsed}

    def dump(self) -> dict[str, Any]:
        return {**self.summary(), "refs": self.refs, "t0": self.t0s, "at": self.ats,
                "duplicate_refs": self.duplicates[:100]}


class Fakes:
    def __init__(self) -> None:
        self.channels = {"sms": Channel(), "email": Channel(), "push": Channel()}
        self.sms_delay = (0.0, 0.005)
        self.sms_in_flight = 0
        self.sms_max_in_flight = 0
        self.release = asyncio.Event()  # ends every SMS delay in progress at once
        self._held: set[asyncio.Future[None]] = set()  # SMS requests in their delay
        self._sids = itertools.count(1)

    def reset(self) -> None:
        self.channels = {"sms": Channel(), "email": Channel(), "push": Channel()}
        self.sms_max_in_flight = 0

    # --- SMS (Twilio-style) -------------------------------------------------------------------

    async def sms(self, request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        form = await request.post()
        body = form.get("Body")
        if not isinstance(body, str) or not form.get("To") or not form.get("From"):
            return web.json_response({"code": 21604, "message": "To, From, Body required"},
                                     status=400)
        self.sms_in_flight += 1
        self.sms_max_in_flight = max(self.sms_max_in_flight, self.sms_in_flight)
        try:
            lo, hi = self.sms_delay
            delay = lo if hi <= lo else random.uniform(lo, hi)
            if delay > 0 and not self.release.is_set():
                # A future and a timer: ``wait_for`` on the event made a task per request,
                # ~4 % of this process's CPU.
                held = asyncio.get_running_loop().create_future()
                timer = held.get_loop().call_later(delay, _wake, held)
                self._held.add(held)
                try:
                    await held
                finally:
                    timer.cancel()
                    self._held.discard(held)
        finally:
            self.sms_in_flight -= 1
        ref, t0 = _REF.search(body), _T0.search(body)
        self.channels["sms"].record(ref and ref.group(1), t0 and float(t0.group(1)), time.time())
        sid = f"SM{next(self._sids):032x}"
        return web.Response(status=201, content_type="application/json",
                            body=orjson.dumps({"sid": sid, "status": "queued"}))

    # --- control -------------------------------------------------------------------------------

    async def count(self, _request: web.Request) -> web.Response:
        body = {name: c.summary() for name, c in self.channels.items()}
        body["sms_in_flight"] = self.sms_in_flight
        body["sms_max_in_flight"] = self.sms_max_in_flight
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def records(self, _request: web.Request) -> web.Response:
        body = {name: c.dump() for name, c in self.channels.items()}
        body["sms_max_in_flight"] = self.sms_max_in_flight
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def control(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if body.get("reset"):
            self.reset()
        if body.get("release"):
            self.release.set()
            for held in self._held:  # wakes every request held now
                _wake(held)
        if "sms_delay_ms" in body:
            lo, hi = body["sms_delay_ms"]
            self.sms_delay = (float(lo) / 1000, float(hi) / 1000)
            if not body.get("release"):
                self.release = asyncio.Event()  # a fresh one for the next hold
        return web.json_response({"ok": True, "sms_delay_ms": [d * 1000 for d in self.sms_delay]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.sms)
        app.router.add_get("/_bench/count", self.count)
        app.router.add_get("/_bench/records", self.records)
        app.router.add_post("/_bench/control", self.control)
        return app


def _wake(held: asyncio.Future[None]) -> None:
    if not held.done():
        held.set_result(None)


# --- SMTP ------------------------------------------------------------------------------------


class _Smtp(SMTP):
    """aiosmtpd's server with a shortcut for plain MAIL/RCPT addresses.

    ``SMTP._getaddr`` runs the stdlib's RFC 5322 header parser and defines a ``Protocol`` class
    on every call: half of this process's SMTP time in a burst. ``<dot-atom@domain>``, with
    parameters or not, is what the gateway sends; it parses to the same address and rest, and
    anything else still goes through aiosmtpd's parser.
    """

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_ADDR.fullmatch(arg)
        if plain is not None:
            return plain.group(1), plain.group(2)
        return super()._getaddr(arg)


class _SmtpHandler:
    def __init__(self, fakes: Fakes) -> None:
        self.fakes = fakes

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        # aiosmtpd serves pipelined commands in order but does not say so; the relays a
        # gateway sends through (Postfix, SES, Gmail) offer PIPELINING, so the fake does too.
        session.host_name = hostname
        responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content or b""
        msgid, t0 = _MSGID_B.search(content), _T0_B.search(content)
        self.fakes.channels["email"].record(
            msgid.group(1).decode() if msgid else None,
            float(t0.group(1)) if t0 else None,
            time.time(),
        )
        return "250 2.0.0 OK queued"


# --- APNs over HTTP/2 ------------------------------------------------------------------------


class _H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection. Every complete POST /3/device/<token> is answered 200 at once."""

    def __init__(self, fakes: Fakes) -> None:
        self._fakes = fakes
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_inbound_headers=False)
        self._conn = h2.connection.H2Connection(config)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20},
        )
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(1 << 24)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = dict(event.headers or [])
                self._streams[event.stream_id] = (headers, bytearray())  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream[1].extend(event.data or b"")
                self._conn.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = self._streams.pop(event.stream_id, ({}, bytearray()))
                self._answer(event.stream_id, headers, bytes(body))
            elif isinstance(event, h2.events.ConnectionTerminated):
                if self._transport is not None:
                    self._transport.close()
        self._flush()

    def _answer(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        status = "200"
        if not str(headers.get("authorization", "")).startswith("bearer "):
            status = "403"
        elif headers.get(":method") != "POST" or not str(headers.get(":path", "")).startswith(
            "/3/device/"
        ):
            status = "405"
        else:
            ref, t0 = _REF_B.search(body), _T0_B.search(body)
            self._fakes.channels["push"].record(
                ref.group(1).decode() if ref else None, float(t0.group(1)) if t0 else None,
                time.time(),
            )
        apns_id = headers.get("apns-id") or f"{stream_id:08x}-0000-4000-8000-000000000000"
        reply = [(":status", status), ("apns-id", apns_id)]
        try:
            if status == "200":
                self._conn.send_headers(stream_id, reply, end_stream=True)
            else:
                self._conn.send_headers(stream_id, reply)
                self._conn.send_data(stream_id, b'{"reason":"BenchRefused"}', end_stream=True)
        except h2.exceptions.H2Error:
            pass

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            data = self._conn.data_to_send()
            if data:
                self._transport.write(data)


# --- main ------------------------------------------------------------------------------------


async def serve(max_seconds: float, sms_delay_ms: tuple[float, float]) -> None:
    loop = asyncio.get_running_loop()
    fakes = Fakes()
    fakes.sms_delay = (sms_delay_ms[0] / 1000, sms_delay_ms[1] / 1000)
    runner = web.AppRunner(fakes.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    sms_port = runner.addresses[0][1]
    handler = _SmtpHandler(fakes)
    smtp_server = await loop.create_server(
        lambda: _Smtp(handler, hostname="bench.local", ident="bench-fake-smtp",
                     data_size_limit=1 << 20, loop=loop),
        "127.0.0.1", 0, backlog=1024,
    )
    apns_server = await loop.create_server(lambda: _H2Protocol(fakes), "127.0.0.1", 0)
    ports = {
        "sms": sms_port,
        "smtp": smtp_server.sockets[0].getsockname()[1],
        "apns": apns_server.sockets[0].getsockname()[1],
    }
    sys.stdout.write(orjson.dumps({"ready": True, "ports": ports}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        sys.stderr.write(f"bench.fakes: max lifetime {max_seconds}s reached, exiting\n")
    smtp_server.close()
    apns_server.close()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--sms-delay-ms", default="0-5", help="lo-hi, uniform (default 0-5)")
    args = parser.parse_args()
    lo, _, hi = args.sms_delay_ms.partition("-")
    delay = (float(lo), float(hi or lo))
    import uvloop

    uvloop.run(serve(args.max_seconds, delay))


if __name__ == "__main__":
    main()
