"""The SMTP client (adapters/smtp_client.py) against real servers: aiosmtpd, and scripted
servers on loopback that answer byte for byte what a test needs (pipelining, odd replies)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import ssl
from collections.abc import Awaitable, Callable

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import OutboundEmail
from adapters.errors import PermanentSendError
from adapters.smtp import SmtpConfig, SmtpSender
from adapters.smtp_client import (
    SmtpConnection,
    SmtpConnectionError,
    SmtpRecipientRefused,
    SmtpReplyError,
    _data,
    open_connection,
)
from tests.smtp_server import RecordingSmtp

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A TCP server on loopback that runs ``script`` for each connection and keeps a log."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.log: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self.script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def line(reader: asyncio.StreamReader) -> str:
    return (await reader.readuntil(b"\r\n")).decode().rstrip("\r\n")


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                extensions: list[str]) -> str:
    """Greeting and the EHLO answer; returns the EHLO line."""
    writer.write(b"220 scripted ESMTP\r\n")
    hello = await line(reader)
    offered = ["scripted"] + extensions
    writer.write("".join(f"250-{e}\r\n" for e in offered[:-1]).encode()
                 + f"250 {offered[-1]}\r\n".encode())
    return hello


async def body(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n.\r\n")


async def connect(port: int, **kwargs: object) -> SmtpConnection:
    return await open_connection("127.0.0.1", port, local_hostname="client.test",
                                 timeout=kwargs.pop("timeout", 2.0), **kwargs)  # type: ignore[arg-type]


async def test_with_pipelining_envelope_and_data_go_in_one_group() -> None:
    """The server answers nothing until it holds MAIL, RCPT and DATA: a client that waited
    for each reply would time out here."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["PIPELINING", "8BITMIME"])
        group = [await line(reader) for _ in range(3)]
        server.log.extend(group)
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
        server.log.append((await body(reader)).decode())
        writer.write(b"250 2.0.0 queued as X1\r\n")
        await line(reader)  # QUIT
        writer.write(b"221 bye\r\n")

    async with Scripted(script) as server:
        connection = await connect(server.port)
        assert connection.pipelining
        reply = await connection.send("a@example.org", "b@example.org", MESSAGE)
        await connection.quit()
    assert reply.code == 250 and reply.message == "2.0.0 queued as X1"
    assert server.log == ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA",
                          MESSAGE.decode() + ".\r\n"]


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    """A server that does not offer PIPELINING answers MAIL late; RCPT must come after."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["8BITMIME"])
        server.log.append(await line(reader))
        await asyncio.sleep(0.2)
        server.log.append("-- MAIL answered")
        writer.write(b"250 ok\r\n")
        server.log.append(await line(reader))
        writer.write(b"250 ok\r\n")
        server.log.append(await line(reader))
        writer.write(b"354 go\r\n")
        await body(reader)
        writer.write(b"250 queued\r\n")

    async with Scripted(script) as server:
        connection = await connect(server.port)
        assert not connection.pipelining
        await connection.send("a@example.org", "b@example.org", MESSAGE)
        connection.close()
    assert server.log == ["MAIL FROM:<a@example.org>", "-- MAIL answered",
                          "RCPT TO:<b@example.org>", "DATA"]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_a_refused_recipient_resets_and_the_connection_carries_the_next_message(
    pipelining: bool,
) -> None:
    """aiosmtpd refuses reject@: the client raises SmtpRecipientRefused, resets, and the same
    session then delivers the next message."""
    server = RecordingSmtp(pipelining=pipelining)
    server.start()
    try:
        connection = await connect(server.port)
        assert connection.pipelining is pipelining
        with pytest.raises(SmtpRecipientRefused) as refused:
            await connection.send("a@example.org", "reject@example.org", MESSAGE)
        assert (refused.value.code, refused.value.message) == (550, "5.1.1 mailbox unavailable")
        assert connection.usable
        await connection.send("a@example.org", "ok@example.org", MESSAGE)
        await connection.quit()
        [received] = await server.wait_for(1)
    finally:
        server.stop()
    assert received.rcpt_tos == ["ok@example.org"]
    assert server.sessions == 1


async def test_a_refused_sender_is_a_reply_error_with_its_code() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["PIPELINING"])
        server.log.extend([await line(reader) for _ in range(3)])
        writer.write(b"553 5.7.1 sender not allowed\r\n503 5.5.1 no sender\r\n"
                     b"503 5.5.1 no recipients\r\n")
        server.log.append(await line(reader))
        writer.write(b"250 reset\r\n")
        await line(reader)

    async with Scripted(script) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpReplyError) as refused:
            await connection.send("a@example.org", "b@example.org", MESSAGE)
        assert not isinstance(refused.value, SmtpRecipientRefused)
        assert (refused.value.code, refused.value.message) == (553, "5.7.1 sender not allowed")
        assert connection.usable
        connection.close()
    assert server.log[-1] == "RSET"


async def test_data_accepted_after_a_refused_envelope_drops_the_connection() -> None:
    """Ending the data there would send an empty message: the client hangs up instead."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["PIPELINING"])
        [await line(reader) for _ in range(3)]
        writer.write(b"250 ok\r\n550 no such user\r\n354 go ahead anyway\r\n")
        server.log.append((await reader.read()).decode())  # what came before the hang-up

    async with Scripted(script) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpConnectionError, match="accepted DATA"):
            await connection.send("a@example.org", "b@example.org", MESSAGE)
        assert not connection.usable
        await asyncio.sleep(0.05)
    assert server.log == [""]


async def test_a_refused_message_after_data_is_a_reply_error() -> None:
    async with Scripted(_answer_data_with(b"554 5.6.0 content rejected\r\n")) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpReplyError) as refused:
            await connection.send("a@example.org", "b@example.org", MESSAGE)
        assert refused.value.code == 554
        connection.close()


def _answer_data_with(answer: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["PIPELINING"])
        [await line(reader) for _ in range(3)]
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await body(reader)
        writer.write(answer)
        await reader.read()
    return script


async def test_a_server_that_stops_answering_times_out_and_the_connection_is_not_reused() -> None:
    async with Scripted(_answer_data_with(b"")) as server:
        connection = await connect(server.port, timeout=0.3)
        with pytest.raises(SmtpConnectionError, match="timed out"):
            await connection.send("a@example.org", "b@example.org", MESSAGE)
        assert not connection.usable


async def test_a_dropped_connection_is_a_connection_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["PIPELINING"])
        await line(reader)

    async with Scripted(script) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpConnectionError, match="closed|lost"):
            await connection.send("a@example.org", "b@example.org", MESSAGE)
        assert not connection.usable


async def test_a_cancelled_send_leaves_the_connection_unusable() -> None:
    """A reply is still owed after a cancellation: the next command would read it as its own."""
    async with Scripted(_answer_data_with(b"")) as server:
        connection = await connect(server.port)
        task = asyncio.create_task(connection.send("a@example.org", "b@example.org", MESSAGE))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not connection.usable


async def test_garbage_instead_of_a_reply_is_a_connection_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await reader.read()

    async with Scripted(script) as server:
        with pytest.raises(SmtpConnectionError, match="no reply"):
            await connect(server.port)


async def test_helo_when_the_server_does_not_know_ehlo() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old server\r\n")
        server.log.append(await line(reader))
        writer.write(b"502 command not implemented\r\n")
        server.log.append(await line(reader))
        writer.write(b"250 old.example\r\n")
        await reader.read()

    async with Scripted(script) as server:
        connection = await connect(server.port)
        assert connection.extensions == {} and not connection.pipelining
        connection.close()
    assert server.log == ["EHLO client.test", "HELO client.test"]


async def test_multi_line_ehlo_answer_gives_the_extensions() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ["SIZE 35882577", "8BITMIME", "AUTH LOGIN PLAIN",
                                     "pipelining", "SMTPUTF8"])
        await reader.read()

    async with Scripted(script) as server:
        connection = await connect(server.port)
        connection.close()
    assert connection.extensions == {"SIZE": "35882577", "8BITMIME": "", "AUTH": "LOGIN PLAIN",
                                     "PIPELINING": "", "SMTPUTF8": ""}
    assert connection.pipelining


def _auth_script(server_log: list[str], offered: str, challenge: bytes = b"") -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, [f"AUTH {offered}"])
        first = await line(reader)
        server_log.append(first)
        if first.startswith("AUTH PLAIN "):
            writer.write(b"235 ok\r\n")
        elif first == "AUTH LOGIN":
            writer.write(b"334 VXNlcm5hbWU6\r\n")
            server_log.append(base64.b64decode(await line(reader)).decode())
            writer.write(b"334 UGFzc3dvcmQ6\r\n")
            server_log.append(base64.b64decode(await line(reader)).decode())
            writer.write(b"235 ok\r\n")
        elif first == "AUTH CRAM-MD5":
            writer.write(b"334 " + base64.b64encode(challenge) + b"\r\n")
            server_log.append(base64.b64decode(await line(reader)).decode())
            writer.write(b"235 ok\r\n")
        await reader.read()
    return script


@pytest.mark.parametrize("offered", ["LOGIN PLAIN", "LOGIN", "CRAM-MD5"])
async def test_auth_mechanisms(offered: str) -> None:
    """PLAIN when offered, else LOGIN, else CRAM-MD5, each with the right credentials."""
    log: list[str] = []
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    async with Scripted(_auth_script(log, offered, challenge)) as server:
        connection = await connect(server.port, username="tim", password="tanstaaftanstaaf")
        connection.close()
    if offered == "LOGIN PLAIN":
        assert log == ["AUTH PLAIN " + base64.b64encode(b"\0tim\0tanstaaftanstaaf").decode()]
    elif offered == "LOGIN":
        assert log == ["AUTH LOGIN", "tim", "tanstaaftanstaaf"]
    else:
        digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
        # RFC 2195's own example: this digest for this challenge and secret.
        assert digest == "b913a602c7eda7a495b4e6e7334d3890"
        assert log == ["AUTH CRAM-MD5", f"tim {digest}"]


async def test_a_command_with_a_line_break_is_refused_before_it_is_sent(
    smtp_server: RecordingSmtp,
) -> None:
    connection = await connect(smtp_server.port)
    try:
        with pytest.raises(ValueError, match="control characters"):
            await connection.send("a@example.org", "b@example.org>\r\nRCPT TO:<c@x.org", MESSAGE)
        await connection.send("a@example.org", "b@example.org", MESSAGE)
    finally:
        await connection.quit()
    [received] = await smtp_server.wait_for(1)
    assert received.rcpt_tos == ["b@example.org"]


async def test_starttls_refused_when_the_server_does_not_offer_it(
    smtp_server: RecordingSmtp,
) -> None:
    with pytest.raises(SmtpReplyError, match="does not offer STARTTLS"):
        await connect(smtp_server.port, tls="starttls")


async def test_a_plaintext_connection_loads_no_certificates(
    smtp_server: RecordingSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the system's CA certificates takes milliseconds of CPU per context: a pool
    opening its connections to a plaintext relay must not pay that once per connection."""
    made: list[object] = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: made.append(1) or real(*a, **k))
    connection = await connect(smtp_server.port)
    await connection.send("a@example.org", "b@example.org", MESSAGE)
    await connection.quit()
    assert made == []
    [received] = await smtp_server.wait_for(1)
    assert received.rcpt_tos == ["b@example.org"]


async def test_connecting_to_nothing_is_a_connection_error() -> None:
    async with Scripted(lambda r, w: asyncio.sleep(0)) as server:
        port = server.port
    with pytest.raises(SmtpConnectionError, match="cannot connect"):
        await connect(port)


# -- the DATA payload -------------------------------------------------------------------------------

CONTENT = st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"\n.\n", b"x", b"From ", b" "])
    | st.binary(max_size=20),
    max_size=40,
).map(b"".join)


@given(CONTENT)
def test_data_payload_is_what_aiosmtplib_put_on_the_wire(content: bytes) -> None:
    """CRLF line ends, leading dots doubled, a final CRLF, then the ending dot line."""
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(content)) + b".\r\n"
    assert _data(content) == expected


@given(CONTENT)
def test_data_payload_reads_back_as_the_normalised_message(content: bytes) -> None:
    payload = _data(content)
    assert payload.endswith(b"\r\n.\r\n")
    lines = payload[:-3].split(b"\r\n")[:-1]
    assert all(not re.search(rb"[\r\n]", part) for part in lines)
    unstuffed = b"\r\n".join(part[1:] if part.startswith(b".") else part for part in lines)
    assert unstuffed + b"\r\n" == normalize_message_line_endings(content)


# -- through the sender: what the client's errors become -------------------------------------------


def _email(message_id: str, to: str, from_: str = "shop@example.org") -> OutboundEmail:
    return OutboundEmail(message_id=message_id, to=to, from_=from_, subject="Hi", text="hello",
                         html=None)


async def test_a_non_ascii_address_to_a_server_without_smtputf8_fails_for_good() -> None:
    server = RecordingSmtp(enable_SMTPUTF8=False)
    server.start()
    sender = SmtpSender(SmtpConfig(host=server.host, port=server.port))
    try:
        with pytest.raises(PermanentSendError, match="^SMTP 555 .*SMTPUTF8"):
            await sender.send(_email("m1", "jäne@example.com"))
        await sender.send(_email("m2", "jane@example.com"))
    finally:
        await sender.close()
        server.stop()
    [received] = server.received
    assert received.rcpt_tos == ["jane@example.com"]
    assert server.sessions == 1  # the refusal left the connection in the pool


async def test_an_address_with_a_control_character_fails_for_good_and_nothing_is_sent(
    smtp_server: RecordingSmtp,
) -> None:
    sender = SmtpSender(SmtpConfig(host=smtp_server.host, port=smtp_server.port))
    try:
        with pytest.raises(PermanentSendError, match="^refused: .*control characters"):
            await sender.send(_email("m1", "jane@example.com", from_="x\x7f@example.org"))
    finally:
        await sender.close()
    await asyncio.sleep(0.1)
    assert smtp_server.received == []
