"""Recipient address checks and normal forms (pure functions).

Each ``normalise_*`` returns the one spelling an address is stored, compared and sent under, or
raises :class:`~gateway.errors.MessageFailed` whose ``reason`` says what is wrong.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from gateway.errors import MessageFailed

# Deliberately plain: one @, no whitespace or control characters, a dotted domain. The SMTP
# server has the last word; this only stops what can never be delivered or is an injection.
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f<>,;]{1,64}@"
    r"(?=.{4,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9\-]{2,63}$"
)
# What a person may type around an international number. Checked before phonenumbers sees it:
# the library also reads letters as keypad digits (+1 800 FLOWERS), other scripts' digits,
# "tel:" prefixes and extensions, none of which belongs in an SMS recipient.
_PHONE_INPUT = re.compile(r"\+[0-9][0-9 ().\-]{0,40}")
_PHONE_EXPECTED = "invalid phone number (E.164 expected, e.g. +14155550100)"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PUSH_TOKEN = re.compile(r"[^\s\x00-\x1f\x7f]{1,512}")

MAX_PUSH_TOKEN_LENGTH = 512


def normalise_email(address: str) -> str:
    """``Jane@Example.COM`` → ``Jane@example.com``; raise :class:`MessageFailed` if invalid."""
    address = address.strip()
    if not _EMAIL.match(address):
        raise MessageFailed("invalid email address")
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(number: str) -> str:
    """``+1 (415) 555-0100`` → ``+14155550100``: a valid number in E.164.

    The number must be international (a leading ``+``: there is no default region) and valid
    for its country code according to ``phonenumbers``' metadata; spaces, dots, dashes and
    parentheses are allowed around the digits. Raises :class:`MessageFailed` otherwise.
    """
    return _normalise_phone(number)


# A pure function of its argument that costs ~30 µs in phonenumbers, asked for several times
# per SMS (claim, prepare, sender) and mostly for the same few thousand numbers: memoised.
# Invalid numbers raise, and exceptions are not cached.
@functools.lru_cache(maxsize=16_384)
def _normalise_phone(number: str) -> str:
    text = number.strip()
    if not _PHONE_INPUT.fullmatch(text):
        raise MessageFailed(_PHONE_EXPECTED)
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise MessageFailed(_PHONE_EXPECTED) from None
    if not phonenumbers.is_valid_number(parsed):
        raise MessageFailed(
            f"{_PHONE_EXPECTED}: not a valid number for country code +{parsed.country_code}"
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def stored_phone(number: str) -> str:
    """A number read back from ``endpoints``, as it is sent: already in E.164, it is taken as is.

    Every writer of ``endpoints`` (the users API, the import) stores what :func:`normalise_phone`
    returned, so the number's validity was checked then; checking it again costs ~30 µs in
    ``phonenumbers`` for each number not seen lately, which with a large population is most of
    them. Anything not in E.164 (a row written by hand) goes through :func:`normalise_phone`.
    """
    return number if _E164.fullmatch(number) else _normalise_phone(number)


def normalise_push_token(token: str) -> str:
    """A device token, trimmed: 1-512 characters, no whitespace or control characters."""
    token = token.strip()
    if not _PUSH_TOKEN.fullmatch(token):
        raise MessageFailed(
            f"invalid device token (1-{MAX_PUSH_TOKEN_LENGTH} characters without whitespace)"
        )
    return token


def normalise_address(channel: str, address: str) -> str:
    """The normal form of ``address`` on ``channel`` (``email``, ``sms`` or ``push``)."""
    if channel == "email":
        return normalise_email(address)
    if channel == "sms":
        return normalise_phone(address)
    if channel == "push":
        return normalise_push_token(address)
    raise MessageFailed(f"unknown channel {channel!r}")


def opt_out_key(channel: str, address: str) -> str:
    """How an opt-out is stored: the normal form, and for email wholly lower case.

    Mailbox providers treat the local part case-insensitively, so an opt-out by ``Jane@`` must
    cover ``jane@``; sending keeps the address as given.
    """
    normal = normalise_address(channel, address)
    return normal.lower() if channel == "email" else normal
