"""The email as bytes (adapters/smtp.py build_mime): what Python's email parser reads back from
it, its line lengths and line ends, header injection, the old path kept for non-ASCII addresses,
and the bytes going through a local SMTP server by ``sendmail``."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtplib.email import flatten_message
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import OutboundEmail
from adapters.errors import PermanentSendError
from adapters.mime import HeaderInjection, Mime, build_email_message, build_mime
from adapters.smtp import SmtpConfig, SmtpSender
from gateway.unsubscribe import list_unsubscribe_headers
from tests.smtp_server import RecordingSmtp

DOMAIN = "mail.example.org"
UNSUBSCRIBE = list_unsubscribe_headers(
    "https://gw.example.com", "jane@example.com", "s" * 32, "unsubscribe@example.com"
)


def outbound(**fields: Any) -> OutboundEmail:
    values: dict[str, Any] = {
        "message_id": "job-1", "to": "jane@example.com", "from_": "Shop <shop@example.org>",
        "subject": "Your order 1234 has shipped", "text": "Hello Jane,\n\nIt is on its way.",
        "html": "<p>Hello Jane,</p><p>It is on its way.</p>",
    }
    values.update(fields)
    return OutboundEmail(**values)


def data_of(message: OutboundEmail) -> bytes:
    content = build_mime(message, domain=DOMAIN).content
    assert isinstance(content, bytes), "expected the byte writer, got the email package"
    return content


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def content_of(parsed: EmailMessage, subtype: str) -> str:
    part = parsed.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    text: str = part.get_content()
    return text


def head_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def as_read(text: str) -> str:
    """A body as it reads back: CR, LF or CRLF each end a line (as CRLF), and it ends with one."""
    normal = re.sub(r"\r\n?|\n", "\r\n", text)
    return normal if normal.endswith("\r\n") else normal + "\r\n"


# -- layout --------------------------------------------------------------------------------------


def test_text_and_html_make_multipart_alternative_with_every_header() -> None:
    """Both bodies give multipart/alternative (text, then HTML) under the same headers as the
    email package wrote, in quoted-printable UTF-8, with CRLF line ends only."""
    data = data_of(outbound(headers=UNSUBSCRIBE))
    names = [line.split(b":", 1)[0] for line in head_lines(data) if not line.startswith(b" ")]
    assert names == [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"X-Gateway-Message-Id",
                     b"List-Unsubscribe", b"List-Unsubscribe-Post", b"MIME-Version",
                     b"Content-Type"]
    assert re.search(rb'\r\nContent-Type: multipart/alternative; boundary="=_[0-9a-f]{24}"\r\n',
                     data)
    assert data.count(b'Content-Type: text/plain; charset="utf-8"\r\n'
                      b"Content-Transfer-Encoding: quoted-printable\r\n") == 1
    assert re.fullmatch(rb"[\x20-\x7e]*", data.replace(b"\r\n", b""))  # no bare CR or LF, 7-bit
    assert normalize_message_line_endings(data) == data  # sendmail sends it as it is

    parsed = parse(data)
    assert parsed["MIME-Version"] == "1.0"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert content_of(parsed, "plain") == "Hello Jane,\r\n\r\nIt is on its way.\r\n"
    assert content_of(parsed, "html") == "<p>Hello Jane,</p><p>It is on its way.</p>\r\n"
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(("text", "html", "subtype"),
                         [("Hi.", None, "plain"), (None, "<p>Hi.</p>", "html")])
def test_one_body_makes_a_single_part(text: str | None, html: str | None, subtype: str) -> None:
    """Text alone is text/plain, HTML alone text/html: no multipart."""
    parsed = parse(data_of(outbound(text=text, html=html)))
    assert parsed.get_content_type() == f"text/{subtype}"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content() == as_read(text or html or "")


def test_message_id_and_date_have_their_usual_shapes() -> None:
    """Message-ID is ``<random@domain>`` (what build_mime reports, so the SendResult's) and
    differs per email; Date is RFC 5322 in UTC."""
    first, second = build_mime(outbound(), domain=DOMAIN), build_mime(outbound(), domain=DOMAIN)
    assert isinstance(first.content, bytes)
    parsed = parse(first.content)
    assert parsed["Message-ID"] == first.message_id != second.message_id
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(DOMAIN)}>", first.message_id)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000",
                        str(parsed["Date"]))


# -- header values --------------------------------------------------------------------------------


def test_non_ascii_subject_and_display_name_are_encoded_words() -> None:
    """A non-ASCII Subject or display name goes as RFC 2047 encoded words and reads back."""
    data = data_of(outbound(from_='"Loja São João, Lda" <loja@example.pt>',
                            subject="Olá Jane — a sua encomenda 1234 já foi enviada 📦" * 3))
    assert b"\r\nSubject: =?utf-8?b?" in data and data.startswith(b"From: =?utf-8?b?")
    parsed = parse(data)
    assert parsed["Subject"] == "Olá Jane — a sua encomenda 1234 já foi enviada 📦" * 3
    [address] = parsed["From"].addresses
    assert (address.display_name, address.addr_spec) == ("Loja São João, Lda",
                                                          "loja@example.pt")
    assert max(len(line) for line in head_lines(data)) <= 78


def test_long_values_fold_at_spaces_and_urls_stay_whole() -> None:
    """Long ASCII values fold before spaces within 78 characters; a longer word (a URL) stays
    whole on its line rather than becoming an encoded word; past 998 it is encoded after all."""
    link = "<https://gw.example.com/v1/unsubscribe/" + "t" * 120 + ">"
    words = " ".join(f"word{i}" for i in range(80))
    data = data_of(outbound(subject=words, headers={"List-Unsubscribe": f"{link}, <mailto:u@e.x>",
                                                    "X-Huge": "h" * 1200}))
    lines = head_lines(data)
    assert f"List-Unsubscribe: {link},".encode() in lines
    assert b" <mailto:u@e.x>" in lines
    assert all(len(line) <= 78 for line in lines if b"unsubscribe/" not in line)
    parsed = parse(data)
    assert (parsed["Subject"], parsed["X-Huge"]) == (words, "h" * 1200)
    assert parsed["List-Unsubscribe"] == f"{link}, <mailto:u@e.x>"


@pytest.mark.parametrize("subject", ["=?utf-8?q?Hi?=", "  two leading spaces", "tab\there", ""])
def test_text_that_would_not_read_back_as_written_is_encoded(subject: str) -> None:
    """A Subject that looks like an encoded word, starts with spaces or holds a control character
    reads back exactly as it was given (the email package read "=?utf-8?q?Hi?=" as "Hi")."""
    assert parse(data_of(outbound(subject=subject)))["Subject"] == subject


def test_from_lines_of_the_body_are_encoded_and_dots_are_left_to_sendmail() -> None:
    """A body line starting "From " is sent as "=46rom " (an mbox would mangle it); lines of
    dots are not stuffed here (sendmail does that), except a lone "." which QP encodes."""
    data = data_of(outbound(text="From me\n.\n..\n.x\nnot From here", html=None))
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body == b"=46rom me\r\n=2E\r\n..\r\n.x\r\nnot From here\r\n"


@pytest.mark.parametrize("text", [
    "From 0000" + "\x80" * 5 + "\U00010000" * 3,  # "=46" lengthens a full line by 2
    "a" * 74 + " ", "a" * 75 + "\t\n", "é" * 24 + " " * 4,  # b2a_qp measures before "=20"
    "=" * 100 + " \n" + "x" * 200 + "From " + "y" * 100,
])
def test_quoted_printable_lines_stay_within_76(text: str) -> None:
    """No body line passes 76 characters, whatever b2a_qp and the "From " guard did to it."""
    data = data_of(outbound(text=text, html=None))
    assert max(len(line) for line in data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")) <= 76
    assert parse(data).get_content() == as_read(text)


# -- header injection -----------------------------------------------------------------------------

BREAKS = ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("brk", BREAKS)
@pytest.mark.parametrize(("field", "name"), [
    ("subject", "Subject"), ("from_", "From"), ("to", "To"),
    ("message_id", "X-Gateway-Message-Id"),
])
def test_a_line_break_in_a_header_is_refused(field: str, brk: str, name: str) -> None:
    """Any str.splitlines() separator inside a header value raises HeaderInjection naming it."""
    with pytest.raises(HeaderInjection, match=f"^header {name} contains a line break$"):
        build_mime(outbound(**{field: f"Jane{brk}Bcc: evil@attacker.example"}), domain=DOMAIN)


@pytest.mark.parametrize("brk", BREAKS)
def test_a_line_break_in_an_extra_header_name_or_value_is_refused(brk: str) -> None:
    """Extra headers are checked too: the name (as "header name") and the value (by its name)."""
    with pytest.raises(HeaderInjection, match="^header header name contains a line break$"):
        build_mime(outbound(headers={f"X-A{brk}Bcc": "x"}), domain=DOMAIN)
    with pytest.raises(HeaderInjection, match="^header List-Unsubscribe contains a line break$"):
        build_mime(outbound(headers={"List-Unsubscribe": f"<x>{brk}Bcc: y"}), domain=DOMAIN)


async def test_the_sender_refuses_an_injection_for_good_before_connecting() -> None:
    """SmtpSender.send turns it into PermanentSendError("refused: ...") with no SMTP traffic
    (port 9 on loopback: nothing listens, nothing is tried)."""
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=9))
    with pytest.raises(PermanentSendError) as caught:
        await sender.send(outbound(subject="Hi\r\nBcc: evil@attacker.example"))
    assert caught.value.reason == "refused: header Subject contains a line break"


# -- what the byte writer leaves to the email package ---------------------------------------------


@pytest.mark.parametrize("message", [
    outbound(to="jäne@example.com"),  # SMTPUTF8: send_message asks the server for it
    outbound(from_="Loja <loja@exämple.pt>"),
    outbound(from_="Shöp, Inc <shop@example.org>"),  # unquoted: not plainly name <address>
    outbound(headers={"X-Gateway-Message-Id": "a second one"}),  # one the writer sets itself
    outbound(headers={"X Bad Name": "x"}),
], ids=["to", "from-address", "from-unquoted", "own-header", "field-name"])
def test_what_the_writer_does_not_cover_goes_the_old_way(message: OutboundEmail) -> None:
    """Non-ASCII addresses, a From not plainly ``name <address>``, and extra headers with an
    odd name or one of ours are built by the email package, under the same Message-ID."""
    mime = build_mime(message, domain=DOMAIN)
    assert isinstance(mime.content, EmailMessage)
    assert mime.content["Message-ID"] == mime.message_id


# -- the round trip, for any content --------------------------------------------------------------

# Tricky pieces, mixed with any text: line ends of every kind, dots, "From ", trailing spaces,
# "=", control characters, long lines, characters of one to four UTF-8 bytes.
PIECES = ["\r\n", "\r", "\n", "\n.\n", ".", "..", "From ", "  ", "\t", " \n", "=", "=?", "?=",
          "\x00", "\x0c", "x" * 90, "é", "€", "😀", "<b>"]
BODIES = st.lists(st.sampled_from(PIECES) | st.text(max_size=30), max_size=30).map("".join)
SEPARATORS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
LINE_CHARACTERS = st.characters(codec="utf-8", exclude_characters=SEPARATORS)
ONE_LINE = st.lists(st.text(LINE_CHARACTERS, max_size=30)
                    | st.sampled_from(["=?", "?=", " ", "  ", "x" * 40, "é", "😀"]),
                    max_size=12).map("".join)
# A separator at the very end is not a line break to str.splitlines(), so it passes the check:
# it must still not break the header.
HEADER_VALUES = st.tuples(ONE_LINE, st.sampled_from(["", "\x85", "\u2028", "\x0c"])).map("".join)
NAME_WORDS = st.text(st.characters(categories=["L", "N"]) | st.sampled_from("&-'.,\"\\é😀"),
                     min_size=1, max_size=20)
DISPLAY_NAMES = st.lists(NAME_WORDS, min_size=1, max_size=6).map(" ".join)


def from_header(name: str, address: str) -> str:
    """``name <address>``, the name quoted (RFC 5322) when it holds a special character."""
    if re.search(r'[][\\()<>@,:;".]', name):
        return '"' + re.sub(r'([\\"])', r"\\\1", name) + f'" <{address}>'
    return f"{name} <{address}>"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=HEADER_VALUES, gateway_id=HEADER_VALUES, extra=HEADER_VALUES,
       name=DISPLAY_NAMES, text=BODIES, html=BODIES)
def test_any_message_reads_back_as_written(
    subject: str, gateway_id: str, extra: str, name: str, text: str, html: str
) -> None:
    """Python's parser (policy.default) reads back every header value and both bodies as given
    (bodies with their line ends made CRLF), with no header but ours; header lines stay within
    998 characters and body lines within 76, all CRLF-ended 7-bit text."""
    message = outbound(subject=subject, message_id=gateway_id,
                       from_=from_header(name, "shop@example.org"), text=text, html=html,
                       headers={"X-Campaign": extra, **UNSUBSCRIBE})
    data = data_of(message)
    head, body = data.split(b"\r\n\r\n", 1)
    assert re.fullmatch(rb"[\t\x20-\x7e]*", data.replace(b"\r\n", b""))  # TAB: QP keeps it
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    parsed = parse(data)
    assert list(parsed.keys()) == ["From", "To", "Subject", "Date", "Message-ID",
                                   "X-Gateway-Message-Id", "X-Campaign", "List-Unsubscribe",
                                   "List-Unsubscribe-Post", "MIME-Version", "Content-Type"]
    assert (parsed["Subject"], parsed["X-Gateway-Message-Id"], parsed["X-Campaign"]) == (
        subject, gateway_id, extra)
    [address] = parsed["From"].addresses
    assert (address.display_name, address.addr_spec) == (name, "shop@example.org")
    assert content_of(parsed, "plain") == as_read(text)
    assert content_of(parsed, "html") == as_read(html)


@settings(max_examples=40, deadline=None)
@given(text=BODIES, html=BODIES)
def test_bodies_read_back_as_the_email_package_wrote_them(text: str, html: str) -> None:
    """Against the old path (EmailMessage flattened by aiosmtplib): the same body texts."""
    message = outbound(text=text, html=html)
    old = parse(flatten_message(build_email_message(message, message_id="<1@x>")))
    new = parse(data_of(message))
    for subtype in ("plain", "html"):
        assert content_of(new, subtype) == content_of(old, subtype)


# -- through an SMTP server -----------------------------------------------------------------------


@pytest.fixture
def utf8_smtp() -> Iterator[RecordingSmtp]:
    """A local SMTP server that offers SMTPUTF8 (the old path needs it for non-ASCII mailboxes)."""
    server = RecordingSmtp(enable_SMTPUTF8=True)
    server.start()
    yield server
    server.stop()


async def test_sendmail_delivers_the_bytes_unchanged(utf8_smtp: RecordingSmtp) -> None:
    """Through a real SMTP conversation the message arrives as built: dot lines once stuffed
    and unstuffed, the envelope from the From address, and the Message-ID is the result's."""
    sender = SmtpSender(SmtpConfig(host=utf8_smtp.host, port=utf8_smtp.port))
    text = ".\n..\n.leading dot\nFrom the start\n"
    try:
        result = await sender.send(outbound(text=text, headers=UNSUBSCRIBE))
        unicode = await sender.send(outbound(to="jäne@example.com", subject="Olá"))
    finally:
        await sender.close()
    first, second = await utf8_smtp.wait_for(2)
    assert (first.mail_from, first.rcpt_tos) == ("shop@example.org", ["jane@example.com"])
    assert first.message["Message-ID"] == result.provider_message_id
    assert content_of(first.message, "plain") == as_read(text)
    assert first.message["List-Unsubscribe"] == UNSUBSCRIBE["List-Unsubscribe"]
    assert (second.rcpt_tos, second.message["To"], second.message["Subject"]) == (
        ["jäne@example.com"], "jäne@example.com", "Olá")
    assert second.message["Message-ID"] == unicode.provider_message_id


def test_build_mime_reports_what_it_built() -> None:
    """Mime pairs the content with its Message-ID."""
    mime = build_mime(outbound(), domain=DOMAIN)
    assert isinstance(mime, Mime) and isinstance(mime.content, bytes)
    assert f"Message-ID: {mime.message_id}\r\n".encode() in mime.content
