"""Email over SMTP with aiosmtplib: a small pool of reused connections, TLS and auth per settings.

SMTP replies map onto our errors by their first digit (RFC 5321 §4.2.1): 4yz is transient,
5yz permanent. A dropped or refused connection is transient. A header value holding CR or LF is
refused before anything is sent.

The message comes from :mod:`adapters.mime` as bytes, handed to ``SMTP.sendmail``, which
line-ends and dot-stuffs it on the wire; the rare message built with the email package instead
goes through ``send_message``, and so behaves exactly as before.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from adapters.base import OutboundEmail, SendResult
from adapters.errors import PermanentSendError, SendError, TransientSendError
from adapters.mime import HeaderInjection, Mime, build_mime


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to connect. ``tls``: ``none``, ``starttls`` or ``tls`` (implicit TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: Literal["none", "starttls", "tls"] = "none"
    timeout: float = 30.0
    pool_size: int = 4
    local_hostname: str | None = None
    ca_file: str | None = None  # a CA bundle to trust (a local server's own certificate)
    message_id_domain: str | None = None  # default: the local hostname, else gateway.local


def classify(exc: BaseException) -> SendError:
    """Translate aiosmtplib's (and the socket's) exceptions into ours, in this one place."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        code = min(codes) if codes else 550
        detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        return _by_code(code, f"recipient refused: {detail}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, f"SMTP {exc.code} {exc.message}")
    if isinstance(exc, (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError)):
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
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(config.pool_size)
        self._domain = config.message_id_domain or config.local_hostname or "gateway.local"

    async def send(self, message: OutboundEmail) -> SendResult:
        """Send one email; raise ``TransientSendError`` or ``PermanentSendError`` when refused."""
        try:
            mime = build_mime(message, domain=self._domain)
        except HeaderInjection as exc:
            raise PermanentSendError(f"refused: {exc}") from None
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            if client is None or not client.is_connected:
                client = await self._connect()
            try:
                await _transmit(client, mime, _envelope(message.from_), message.to)
            except BaseException as exc:
                await self._discard(client, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise classify(exc) from None
            self._idle.append(client)
        return SendResult(provider_message_id=mime.message_id)

    async def _connect(self) -> aiosmtplib.SMTP:
        # Every failure here, a refused login included, is transient: it is the server's or
        # our configuration's problem, not the message's, and fixing it should let mail flow.
        config = self._config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            timeout=config.timeout,
            use_tls=config.tls == "tls",
            start_tls=config.tls == "starttls",
            validate_certs=True,
            cert_bundle=config.ca_file,
            local_hostname=config.local_hostname,
        )
        try:
            await client.connect()
            if config.username:
                await client.login(config.username, config.password or "")
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            client.close()
            raise TransientSendError(f"SMTP connection to {config.host}:{config.port} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        return client

    async def _discard(self, client: aiosmtplib.SMTP | None, exc: BaseException) -> None:
        # A refused recipient leaves the connection usable (aiosmtplib sends RSET); anything
        # else may have left it mid-transaction, so it is closed rather than reused.
        if client is None:
            return
        refused = (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused)
        if isinstance(exc, refused) and client.is_connected:
            self._idle.append(client)
            return
        client.close()

    async def close(self) -> None:
        """Say QUIT on every idle connection."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _transmit(client: aiosmtplib.SMTP, mime: Mime, sender: str, recipient: str) -> None:
    if isinstance(mime.content, bytes):
        # sendmail line-ends and dot-stuffs the bytes itself: they go as written, unstuffed.
        await client.sendmail(sender, [recipient], mime.content)
    else:
        await client.send_message(mime.content, sender=sender, recipients=[recipient])


@functools.lru_cache(maxsize=64)  # parseaddr costs as much as writing the whole message
def _envelope(address: str) -> str:
    """The bare address for MAIL FROM, from a header value such as ``Shop <shop@example.com>``."""
    return email.utils.parseaddr(address)[1] or address
