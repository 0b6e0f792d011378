"""Providers that fail on demand, for the fault tests (tests/test_faults.py).

- :class:`SwitchableTwilio`: the fake Twilio of ``tests/fake_twilio.py`` with an outage switch;
  while ``down`` is set, every request is answered 503 (its magic numbers work otherwise).
- :class:`SilentServer`: accepts TCP connections and never writes a byte, nor closes them: an
  SMTP server that never sends its greeting, an HTTP server that never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from tests.fake_twilio import FakeTwilio, Received


class SwitchableTwilio(FakeTwilio):
    """A fake Twilio that answers 503 to every request while ``down`` is true."""

    def __init__(self, *, slow_seconds: float = 1.0) -> None:
        super().__init__(slow_seconds=slow_seconds)
        self.down = False
        # Called as each request arrives, before it is answered (a test reads state then).
        self.on_request: Callable[[], None] | None = None

    async def _misbehave(self, to: str) -> web.Response | None:
        if self.on_request is not None:
            self.on_request()
        if self.down:
            return web.Response(status=503, text="<html>Service Unavailable</html>",
                                content_type="text/html")
        return await super()._misbehave(to)

    def arrived_between(self, start: float, end: float) -> list[Received]:
        """The requests that arrived in ``[start, end)`` (event loop time)."""
        return [r for r in self.received if start <= r.at < end]


class SilentServer:
    """Listens on 127.0.0.1, accepts every connection, reads what comes and never answers."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        while await reader.read(65536):  # swallow the request; EOF when the client gives up
            pass

    async def stop(self) -> None:
        """Close every held connection, then the listening socket."""
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
