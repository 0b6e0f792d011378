"""A fake Twilio Messages API: an aiohttp app on 127.0.0.1, recording every request.

It checks HTTP Basic auth (401 with code 20003 otherwise) and the form (To, From, Body), and
answers 201 with a body shaped like Twilio's. The end of the ``To`` number picks a misbehaviour,
so a test chooses the provider's answer through its input:

==========  ====================================================================
``0021610``  400, code 21610 (recipient opted out)
``0021211``  400, code 21211 (invalid To)
``0021614``  400, code 21614 (To cannot receive SMS)
``0021602``  400, code 21602 (another 4xx: message body required)
``0000429``  429 with ``Retry-After: 1`` the first time for that number, then success
``0020429``  429, code 20429, no Retry-After
``0000503``  503 with a non-JSON body
``0000999``  sleeps ``slow_seconds`` before answering (past the client's timeout)
==========  ====================================================================
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "fake-auth-token"


@dataclass(frozen=True)
class Received:
    """One request as the fake saw it; ``at`` is the event loop time of its arrival."""

    at: float
    path: str
    authorization: str | None
    form: dict[str, str]


def _error(status: int, code: int, message: str, **headers: str) -> web.Response:
    body = {"code": code, "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return web.json_response(body, status=status, headers=headers)


class FakeTwilio:
    """Start with ``await fake.start()``; point ``TwilioConfig.base_url`` at ``fake.url``."""

    def __init__(self, *, slow_seconds: float = 1.0) -> None:
        self.slow_seconds = slow_seconds
        self.received: list[Received] = []
        self._seen: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        return app

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._runner = web.AppRunner(self._app(), shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()

    def sent_to(self, to: str) -> list[Received]:
        """The requests for one ``To`` number."""
        return [r for r in self.received if r.form.get("To") == to]

    def _authorised(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        return (request.match_info["sid"] == ACCOUNT_SID
                and request.headers.get("Authorization") == f"Basic {expected}")

    async def _create(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        at = asyncio.get_running_loop().time()
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.received.append(Received(at, request.path, request.headers.get("Authorization"), form))
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        to = form.get("To", "")
        self._seen[to] = self._seen.get(to, 0) + 1
        if not to or not form.get("From") or not form.get("Body"):
            return _error(400, 21604, "A 'To', 'From' and 'Body' are required")
        magic = await self._misbehave(to)
        return magic if magic is not None else self._created(form)

    async def _misbehave(self, to: str) -> web.Response | None:
        if to.endswith("0021610"):
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        if to.endswith("0021211"):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to.endswith("0021614"):
            return _error(400, 21614, f"'To' number {to} is not a valid mobile number")
        if to.endswith("0021602"):
            return _error(400, 21602, "Message body is required.")
        if to.endswith("0000429") and self._seen[to] == 1:
            return _error(429, 20429, "Too Many Requests", **{"Retry-After": "1"})
        if to.endswith("0020429"):
            return _error(429, 20429, "Too Many Requests")
        if to.endswith("0000503"):
            return web.Response(status=503, text="<html>Service Unavailable</html>",
                                content_type="text/html")
        if to.endswith("0000999"):
            await asyncio.sleep(self.slow_seconds)
        return None

    def _created(self, form: dict[str, str]) -> web.Response:
        body: dict[str, Any] = {
            "sid": "SM" + secrets.token_hex(16),
            "account_sid": ACCOUNT_SID,
            "to": form["To"],
            "from": form["From"],
            "body": form["Body"],
            "status": "queued",
            "num_segments": "1",
            "error_code": None,
            "error_message": None,
            "api_version": "2010-04-01",
        }
        return web.json_response(body, status=201)
