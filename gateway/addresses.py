"""Recipient address checks and normal forms (pure functions)."""

from __future__ import annotations

import re

from gateway.errors import MessageFailed

# Deliberately plain: one @, no whitespace or control characters, a dotted domain. The SMTP
# server has the last word; this only stops what can never be delivered or is an injection.
_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f<>,;]{1,64}@"
    r"(?=.{4,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9\-]{2,63}$"
)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def normalise_email(address: str) -> str:
    """``Jane@Example.COM`` → ``Jane@example.com``; raise :class:`MessageFailed` if invalid."""
    address = address.strip()
    if not _EMAIL.match(address):
        raise MessageFailed("invalid email address")
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(number: str) -> str:
    """Strip spaces, dashes, dots and parentheses; require E.164 (``+`` and 7-15 digits)."""
    compact = re.sub(r"[\s\-.()]", "", number)
    if not _E164.match(compact):
        raise MessageFailed("invalid phone number (E.164 expected, e.g. +14155550100)")
    return compact
