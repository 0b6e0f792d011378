"""Email messages written straight to bytes: RFC 5322 headers, MIME parts in quoted-printable.

Building an ``EmailMessage`` and having aiosmtplib's ``send_message`` copy and flatten it cost
close to a millisecond of CPU per email; writing the bytes here costs tens of microseconds. A
message the byte writer leaves alone (an address that is not ASCII, which needs SMTPUTF8; a
``From`` it cannot re-encode faithfully; an extra header that is not a plain field name or
repeats one of ours) is built with the email package instead (:func:`build_email_message`), as
every email was before. A header value holding CR or LF is refused (:class:`HeaderInjection`)
before anything is built.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from adapters.base import OutboundEmail

__all__ = ["HeaderInjection", "Mime", "build_email_message", "build_mime"]


class HeaderInjection(ValueError):
    """A header value held a line break."""


def _check_header(name: str, value: str) -> str:
    # str.splitlines() separators are what CPython's email policy refuses; check them all here
    # so the message fails with our reason, not a library traceback.
    if len(value.splitlines()) > 1 or "\r" in value or "\n" in value:
        raise HeaderInjection(f"header {name} contains a line break")
    return value


@dataclass(frozen=True, slots=True)
class Mime:
    """A message ready to send, and the ``Message-ID`` it carries.

    ``content`` is the DATA bytes, or, for the rare message the byte writer leaves to the email
    package, an ``EmailMessage`` for ``send_message`` to flatten (and to ask for SMTPUTF8).
    """

    message_id: str
    content: bytes | EmailMessage


def build_mime(message: OutboundEmail, *, domain: str) -> Mime:
    """The message: multipart/alternative when both text and HTML are given.

    Raises :class:`HeaderInjection` when a header value holds a line break.
    """
    message_id = email.utils.make_msgid(domain=domain)
    head = _head(message, message_id)
    if head is None:
        return Mime(message_id, build_email_message(message, message_id=message_id))
    return Mime(message_id, head.encode("ascii") + _body(message.text, message.html))


def build_email_message(message: OutboundEmail, *, message_id: str) -> EmailMessage:
    """The same message built with the email package: the way every email went before the byte
    writer, kept for the messages it does not cover (see the module docstring)."""
    mime = EmailMessage(policy=SMTP_POLICY)
    mime["From"] = _check_header("From", message.from_)
    mime["To"] = _check_header("To", message.to)
    mime["Subject"] = _check_header("Subject", message.subject)
    mime["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mime["Message-ID"] = message_id
    mime["X-Gateway-Message-Id"] = _check_header("X-Gateway-Message-Id", message.message_id)
    for name, value in message.headers.items():
        mime[_check_header("header name", name)] = _check_header(name, value)
    if message.text is not None:
        mime.set_content(message.text, subtype="plain", cte="quoted-printable")
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html", cte="quoted-printable")
    elif message.html is not None:
        mime.set_content(message.html, subtype="html", cte="quoted-printable")
    return mime


# -- the byte writer ------------------------------------------------------------------------------

_CRLF = "\r\n"
_FOLD_AT = 78  # RFC 5322 §2.1.1: a line SHOULD be at most 78 characters...
_LINE_LIMIT = 998  # ...and MUST be at most 998
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
# Free text is written as it is when printable ASCII, unless it holds "=?", which a reader would
# decode as an encoded word (RFC 2047), or starts with a space, which a reader strips: such text
# is encoded, so that it reads back as written (an address header's "=?" is left for the reader
# to decode: a display name encoded beforehand, as the email package let it be).
_NOT_PLAIN_TEXT = re.compile(r"^ |[^\x20-\x7e]|=\?")
_QUOTED_PAIR = re.compile(r'([\\"])')
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext
_WORDS = re.compile(r" +[^ ]*")
# Headers the writer sets itself. An extra header by one of these names goes the old way,
# which refuses a second From or Subject (a ValueError) as it always has.
_OWN_HEADERS = frozenset({
    "from", "to", "subject", "date", "message-id", "x-gateway-message-id", "mime-version",
    "content-type", "content-transfer-encoding",
})


def _head(message: OutboundEmail, message_id: str) -> str | None:
    """The header lines, CRLF-ended, or ``None`` to leave the message to the email package.

    Every value is checked for line breaks first, in the order the old builder checked them,
    so an injection is refused with the same reason whichever way the message then goes.
    """
    from_ = _check_header("From", message.from_)
    to = _check_header("To", message.to)
    subject = _check_header("Subject", message.subject)
    gateway_id = _check_header("X-Gateway-Message-Id", message.message_id)
    extra = [(_check_header("header name", name), _check_header(name, value))
             for name, value in message.headers.items()]
    from_line = _from_line(from_)
    if from_line is None or _NOT_PRINTABLE.search(to) or len(to) > _LINE_LIMIT - 4:
        return None  # a non-ASCII address: SMTPUTF8, which send_message negotiates
    if any(not _FIELD_NAME.fullmatch(name) or name.lower() in _OWN_HEADERS for name, _ in extra):
        return None
    lines = [
        from_line,
        f"To: {to}\r\n",
        _unstructured("Subject", subject),
        f"Date: {_date(int(time.time()))}\r\n",
        f"Message-ID: {message_id}\r\n",
        _unstructured("X-Gateway-Message-Id", gateway_id),
    ]
    lines += [_unstructured(name, value) for name, value in extra]
    return "".join(lines)


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    # "+0000", as the email package writes a UTC date: RFC 5322 §4.3 makes "GMT" obsolete.
    # Emails sent within the same second share the string; formatting it is a fifth of the
    # writer's own cost.
    return email.utils.format_datetime(datetime.fromtimestamp(second, UTC))


@functools.lru_cache(maxsize=64)
def _from_line(value: str) -> str | None:
    """``From: value`` CRLF, a non-ASCII display name RFC 2047-encoded; ``None`` when the
    address is not ASCII or the value is not plainly ``name <address>``.

    Cached: a gateway sends from a handful of addresses, most often its one default.
    """
    if not _NOT_PRINTABLE.search(value):
        return f"From: {value}\r\n" if len(value) <= _LINE_LIMIT - 6 else None
    name, address = email.utils.parseaddr(value)
    if not name or not address or _NOT_PRINTABLE.search(address):
        return None
    quoted = _QUOTED_PAIR.sub(r"\\\1", name)
    if value.strip() not in (f"{name} <{address}>", f'"{quoted}" <{address}>'):
        return None  # parseaddr read past something odd: the email package keeps it as it is
    # One encoded word, as formataddr writes it, however long: Python's own parser reads a space
    # into a display name between two words (RFC 2047 §6.2 says to ignore it).
    line = f"From: =?utf-8?b?{_base64(name.encode())}?= <{address}>\r\n"
    return line if len(line) <= _LINE_LIMIT + 2 else None


def _unstructured(name: str, value: str) -> str:
    """``name: value`` CRLF for free text, folded at spaces past 78 characters, and encoded
    (RFC 2047, folded too) when not printable ASCII or when a line would pass 998."""
    if not _NOT_PLAIN_TEXT.search(value):
        if len(name) + len(value) <= _FOLD_AT - 2:
            return f"{name}: {value}\r\n"
        folded = _fold(name, value)
        if folded is not None:
            return folded
    return f"{name}: {_encoded_words(name, value)}\r\n"


def _fold(name: str, value: str) -> str | None:
    """Fold before a run of spaces wherever the line would pass 78 characters (a long word
    stays whole: unlike the email package, a URL is never turned into an encoded word);
    ``None`` if a line still passes 998."""
    words = _WORDS.findall(" " + value)  # each: its leading spaces, then a word
    lines = [f"{name}:{words[0]}"]
    for word in words[1:]:
        # A folded line may not be spaces only (RFC 5322 §3.2.2): trailing spaces stay put.
        if len(lines[-1]) + len(word) > _FOLD_AT and word.strip(" "):
            lines.append(word)
        else:
            lines[-1] += word
    if any(len(line) > _LINE_LIMIT for line in lines):
        return None
    return _CRLF.join(lines) + _CRLF


def _encoded_words(name: str, value: str) -> str:
    """``value`` as RFC 2047 encoded words (UTF-8, base64), one per folded line.

    Each word holds whole characters, so each decodes on its own, and is at most 75
    characters long (§2); the first is shortened to keep ``name: `` and it within 78.
    """
    data = value.encode("utf-8")
    # 12 characters of "=?utf-8?b?" and "?="; base64 takes 3 bytes to 4 characters.
    size = max((_FOLD_AT - len(name) - 2 - 12) // 4 * 3, 12)
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte
            end -= 1
        words.append(f"=?utf-8?b?{_base64(data[start:end])}?=")
        start, size = end, 45
    return "\r\n ".join(words)


def _base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


_TEXT_PART = (b'Content-Type: text/%s; charset="utf-8"\r\n'
              b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")


def _body(text: str | None, html: str | None) -> bytes:
    """``MIME-Version`` and the content: one text part, or multipart/alternative of both."""
    if html is None:  # neither is an empty text/plain part: a well-formed message all the same
        return b"MIME-Version: 1.0\r\n" + _TEXT_PART % b"plain" + _quoted_printable(text or "")
    if text is None:
        return b"MIME-Version: 1.0\r\n" + _TEXT_PART % b"html" + _quoted_printable(html)
    # "=_" can never occur in quoted-printable ("=" is always "=3D" there), so a boundary that
    # starts with it needs no search through the parts.
    boundary = b"=_" + binascii.hexlify(os.urandom(12))
    delimiter = b"\r\n--" + boundary
    return b"".join((
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="', boundary,
        b'"\r\n', delimiter, b"\r\n", _TEXT_PART % b"plain", _quoted_printable(text),
        delimiter, b"\r\n", _TEXT_PART % b"html", _quoted_printable(html),
        delimiter, b"--\r\n",
    ))


_OVERLONG = re.compile(rb"^[^\r\n]{77,}", re.MULTILINE)


def _quoted_printable(text: str) -> bytes:
    """``text`` as quoted-printable UTF-8: CRLF line ends, lines of at most 76 characters."""
    # bytes.splitlines ends a line at CR, LF or CRLF, as the email package's encoder does; each
    # becomes CRLF and the text ends with one. b2a_qp keeps those ends (istext) and encodes
    # "=", 8-bit and control bytes, spaces before a line end, and a line of a lone ".".
    data = b"\r\n".join(text.encode("utf-8").splitlines()) + b"\r\n"
    encoded = binascii.b2a_qp(data, istext=True)
    # b2a_qp encodes a space or tab ending a line after measuring the line, which can leave it
    # 77 or 78 characters long; "=46" below lengthens a line by 2: both are split again.
    overlong = b" \r\n" in data or b"\t\r\n" in data
    # Dots are left to sendmail, which stuffs every line starting with one. "From " starting a
    # line would become ">From " in an mbox on the way; "=46rom " reads back the same.
    if b"From " in encoded:
        encoded = encoded.replace(b"\r\nFrom ", b"\r\n=46rom ")
        if encoded.startswith(b"From "):
            encoded = b"=46" + encoded[1:]
        overlong = True
    return _OVERLONG.sub(_split_line, encoded) if overlong else encoded


def _split_line(match: re.Match[bytes]) -> bytes:
    """A quoted-printable line over 76 characters as soft-broken lines, no "=XX" cut in two."""
    line, lines = match.group(), []
    while len(line) > 76:
        cut = 75  # and the "=" of the soft break makes 76
        if line[cut - 1] == 0x3D:  # "="
            cut -= 1
        elif line[cut - 2] == 0x3D:
            cut -= 2
        lines.append(line[:cut] + b"=")
        line = line[cut:]
        if line.startswith(b"From "):
            line = b"=46" + line[1:]
    lines.append(line)
    return b"\r\n".join(lines)
