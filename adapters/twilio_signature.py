"""Twilio webhook signatures (``X-Twilio-Signature``) and status callback parameters. Pure.

The signature, as twilio-python's ``request_validator.py`` computes it: the full URL as
requested (query string included), then every POST parameter sorted by name, each value of a
multi-valued name sorted too, appended as name + value with no separators; HMAC-SHA1 keyed with
the auth token; base64. Every parameter received is signed, not a fixed list, because Twilio
adds parameters without notice. A URL is accepted with and without its scheme's default port
(``:443`` for https, ``:80`` for http), since Twilio may have signed either form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import NamedTuple

Params = Mapping[str, "str | list[str]"]

_DEFAULT_PORTS = {"https": 443, "http": 80}

# Twilio's message statuses (callbacks come for sent, delivered, undelivered, failed and read).
STATUSES = frozenset({
    "queued", "sending", "sent", "failed", "delivered", "undelivered", "receiving", "received",
    "accepted", "scheduled", "read", "partially_delivered", "canceled",
})


def collect_params(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group form pairs (``(await request.post()).items()``) by name, keeping repeated names."""
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def compute_signature(auth_token: str, url: str, params: Params) -> str:
    """The base64 HMAC-SHA1 Twilio sends in ``X-Twilio-Signature`` for ``url`` and ``params``."""
    payload = [url]
    for name in sorted(params):
        value = params[name]
        for item in sorted([value] if isinstance(value, str) else value):
            payload.append(name + item)
    digest = hmac.new(auth_token.encode(), "".join(payload).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_forms(url: str) -> list[str]:
    """``url`` as given, plus the same URL with its default port added or removed."""
    parts = urllib.parse.urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:  # a malformed port: only the URL exactly as given can match
        return [url]
    if default is None:
        return [url]
    if port is None:
        return [url, urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))]
    if port == default:
        bare = parts.netloc.rsplit(":", 1)[0]
        return [url, urllib.parse.urlunsplit(parts._replace(netloc=bare))]
    return [url]


def validate_signature(auth_token: str, url: str, params: Params, signature: str) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` (default port or not) and ``params``."""
    given = signature.encode()
    # Compare against every form without stopping early, in constant time per comparison.
    matches = [
        hmac.compare_digest(compute_signature(auth_token, form, params).encode(), given)
        for form in _url_forms(url)
    ]
    return any(matches)


class StatusCallback(NamedTuple):
    """What a status callback says: which message, its new status, Twilio's error code if any."""

    message_sid: str
    status: str
    error_code: str | None


class InvalidStatusCallback(ValueError):
    """Raised when a status callback lacks ``MessageSid`` or ``MessageStatus``."""


def _first(params: Params, *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if value:
            return value.strip() or None
    return None


def parse_status_callback(params: Params) -> StatusCallback:
    """``(message_sid, status, error_code)`` from a callback's parameters.

    ``SmsSid``/``SmsStatus`` are read when the current names are absent. The status is
    lower-cased and passed through even when it is not in :data:`STATUSES`: Twilio adds states,
    and refusing the callback would only make it retry.
    """
    sid = _first(params, "MessageSid", "SmsSid")
    status = _first(params, "MessageStatus", "SmsStatus")
    if sid is None or status is None:
        raise InvalidStatusCallback("status callback needs MessageSid and MessageStatus")
    return StatusCallback(sid, status.lower(), _first(params, "ErrorCode"))
