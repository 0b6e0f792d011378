"""Email over SMTP: a small pool of reused connections, TLS and auth per settings.

The SMTP dialogue is :mod:`adapters.smtp_client`'s (pipelined when the server offers
PIPELINING). SMTP replies map onto our errors by their first digit (RFC 5321 §4.2.1): 4yz is
transient, 5yz permanent. A dropped or refused connection is transient. A header value holding
CR or LF is refused before anything is sent.

The message comes from :mod:`adapters.mime` as bytes, which the client line-ends and
dot-stuffs on the wire; the rare message built with the email package instead is flattened
here as aiosmtplib's ``send_message`` did it (SMTPUTF8 asked for when an address needs it,
8-bit content when the server offers 8BITMIME), and so behaves exactly as before.
"""

from __future__ import annotations

import asyncio
import copy
import email.generator
import email.policy
import email.utils
import functools
import io
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from adapters.base import OutboundEmail, SendResult
from adapters.errors import PermanentSendError, SendError, TransientSendError
from adapters.mime import HeaderInjection, Mime, build_mime
from adapters.smtp_client import (
    SmtpConnection,
    SmtpError,
    SmtpRecipientRefused,
    SmtpReplyError,
    open_connection,
)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to connect. ``tls``: ``none``, ``starttls`` or ``tls`` (implicit TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: Literal["none", "starttls", "tls"] = "none"
    timeout: float = 30.0
    pool_size: int = 16
    local_hostname: str | None = None
    ca_file: str | None = None  # a CA bundle to trust (a local server's own certificate)
    message_id_domain: str | None = None  # default: the local hostname, else gateway.local


def classify(exc: BaseException) -> SendError:
    """Translate the SMTP client's (and the socket's) exceptions into ours, in this one place."""
    if isinstance(exc, SmtpRecipientRefused):
        return _by_code(exc.code, f"recipient refused: {exc.code} {exc.message}")
    if isinstance(exc, SmtpReplyError):
        return _by_code(exc.code, f"SMTP {exc.code} {exc.message}")
    if isinstance(exc, ValueError):  # a control character in an address: never sendable
        return PermanentSendError(f"refused: {exc}")
    if isinstance(exc, (SmtpError, OSError, asyncio.TimeoutError)):
        return TransientSendError(f"SMTP connection problem: {type(exc).__name__}: {exc}")
    return TransientSendError(f"unexpected SMTP error: {type(exc).__name__}: {exc}")


# 5yz replies that mean "authenticate or secure the connection first": our configuration is
# wrong, not the message, so retrying after ops fix it should deliver it.
_CONFIGURATION_CODES = frozenset({530, 534, 535, 538})


def _by_code(code: int, reason: str) -> SendError:
    if 400 <= code < 500 or code in _CONFIGURATION_CODES:
        return TransientSendError(reason[:500])
    return PermanentSendError(reason[:500])


class SmtpSender:
    """Sends :class:`OutboundEmail` over a pool of up to ``pool_size`` SMTP connections."""

    channel = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: list[SmtpConnection] = []
        self._slots = asyncio.Semaphore(config.pool_size)
        self._domain = config.message_id_domain or config.local_hostname or "gateway.local"
        self._local_hostname = config.local_hostname
        self._ssl_context: ssl.SSLContext | None = None

    async def send(self, message: OutboundEmail) -> SendResult:
        """Send one email; raise ``TransientSendError`` or ``PermanentSendError`` when refused."""
        try:
            mime = build_mime(message, domain=self._domain)
        except HeaderInjection as exc:
            raise PermanentSendError(f"refused: {exc}") from None
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            if connection is None or not connection.usable:
                connection = await self._connect()
            try:
                await _transmit(connection, mime, _envelope(message.from_), message.to)
            except BaseException as exc:
                self._discard(connection, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise classify(exc) from None
            self._idle.append(connection)
        return SendResult(provider_message_id=mime.message_id)

    async def _connect(self) -> SmtpConnection:
        # Every failure here, a refused login included, is transient: it is the server's or
        # our configuration's problem, not the message's, and fixing it should let mail flow.
        config = self._config
        if self._local_hostname is None:
            # getfqdn may ask the resolver: once per sender, off the loop.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        if self._ssl_context is None and config.tls != "none":
            self._ssl_context = ssl.create_default_context(cafile=config.ca_file)
        try:
            return await open_connection(
                config.host, config.port, tls=config.tls, ssl_context=self._ssl_context,
                local_hostname=self._local_hostname, username=config.username,
                password=config.password, timeout=config.timeout,
            )
        except SmtpError as exc:
            raise TransientSendError(f"SMTP connection to {config.host}:{config.port} failed: "
                                     f"{type(exc).__name__}: {exc}"[:500]) from None

    def _discard(self, connection: SmtpConnection, exc: BaseException) -> None:
        # A refused command leaves the session reset and usable (the client sends RSET);
        # anything else may have left it mid-transaction, so it is closed rather than reused.
        if isinstance(exc, (SmtpReplyError, ValueError)) and connection.usable:
            self._idle.append(connection)
            return
        connection.close()

    async def close(self) -> None:
        """Say QUIT on every idle connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.quit()


async def _transmit(connection: SmtpConnection, mime: Mime, sender: str, recipient: str) -> None:
    if isinstance(mime.content, bytes):
        # The client line-ends and dot-stuffs the bytes itself: they go as written, unstuffed.
        await connection.send(sender, recipient, mime.content)
        return
    options: list[str] = []
    utf8 = not (sender + recipient).isascii()
    if utf8:
        if "SMTPUTF8" not in connection.extensions:
            raise SmtpReplyError(
                555, "the address is not ASCII and the server does not offer SMTPUTF8"
            )
        options.append("SMTPUTF8")
    eight_bit = "8BITMIME" in connection.extensions
    if eight_bit:
        options.append("BODY=8BITMIME")
    await connection.send(
        sender, recipient, _flatten(mime.content, utf8=utf8, eight_bit=eight_bit),
        mail_options=options,
    )


def _flatten(message: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    """The message's bytes, as aiosmtplib's ``send_message`` wrote them (Bcc left out)."""
    message = copy.copy(message)
    del message["Bcc"]
    del message["Resent-Bcc"]
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    if not eight_bit:
        policy = policy.clone(cte_type="7bit")
    with io.BytesIO() as buffer:
        email.generator.BytesGenerator(buffer, policy=policy).flatten(message)
        return buffer.getvalue()


@functools.lru_cache(maxsize=64)  # parseaddr costs as much as writing the whole message
def _envelope(address: str) -> str:
    """The bare address for MAIL FROM, from a header value such as ``Shop <shop@example.com>``."""
    return email.utils.parseaddr(address)[1] or address
