"""A local SMTP server for tests: aiosmtpd in a thread, recording every accepted message.

Magic recipients make it answer as real servers do:
``tempfail-N@…`` gets ``451`` for its first N attempts, then is accepted;
``reject@…`` always gets ``550``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class _Handler:
    def __init__(self, owner: "RecordingSmtp") -> None:
        self.owner = owner

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        with self.owner.lock:
            self.owner.sessions += 1
            self.owner.hellos.append(hostname)
        session.host_name = hostname
        if self.owner.pipelining:
            # aiosmtpd reads commands one line at a time, so pipelined ones are served in order;
            # it just never says so. Real relays (Postfix, SES, Gmail) do.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        local = address.split("@")[0]
        with self.owner.lock:
            self.owner.attempts[address] = self.owner.attempts.get(address, 0) + 1
            attempt = self.owner.attempts[address]
        if local == "reject":
            return "550 5.1.1 mailbox unavailable"
        match = re.fullmatch(r"tempfail-(\d+)", local)
        if match and attempt <= int(match.group(1)):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.owner.lock:
            self.owner.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


class RecordingSmtp:
    """Start with ``start()``; read ``received``; ``wait_for(n)`` in async tests."""

    def __init__(
        self, *, credentials: tuple[str, str] | None = None, pipelining: bool = True,
        **smtp_kwargs: Any,
    ) -> None:
        """``credentials`` require AUTH; ``pipelining`` offers PIPELINING (RFC 2920) in the
        EHLO answer; ``smtp_kwargs`` go to aiosmtpd (``tls_context``, ``ssl_context`` …)."""
        self.lock = threading.Lock()
        self.pipelining = pipelining
        self.hellos: list[str] = []
        self.logins: list[str] = []
        self.received: list[Received] = []
        self.attempts: dict[str, int] = {}
        self.sessions = 0
        self.host = "127.0.0.1"
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            self.port = sock.getsockname()[1]
        if credentials is not None:
            smtp_kwargs.update(
                authenticator=self._authenticator(credentials), auth_required=True,
                auth_require_tls=True,
            )
        self._controller = Controller(
            _Handler(self), hostname=self.host, port=self.port, **smtp_kwargs
        )

    def _authenticator(self, credentials: tuple[str, str]) -> Any:
        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (
                data.login.decode(), data.password.decode()
            ) == credentials
            if ok:
                with self.lock:
                    self.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)

        return authenticate

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]

    async def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        """Wait until at least ``count`` messages arrived; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            if loop.time() > deadline:
                raise AssertionError(f"expected {count} emails, got {len(self.received)}")
            await asyncio.sleep(0.02)
