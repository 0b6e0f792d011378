"""One-click unsubscribe links (RFC 8058): signed tokens and the ``List-Unsubscribe`` headers.

A token is ``<payload>.<mac>``, both URL-safe base64 without padding: the payload is the channel
and the lower-cased address, the mac an HMAC-SHA256 of it under ``GATEWAY_UNSUBSCRIBE_SECRET``.
The link needs no lookup and never expires; changing the secret invalidates every link already
sent. The address is signed, not encrypted: whoever holds the link can read it, as they could
read the email it came in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from pydantic import SecretStr

from gateway.settings import Settings

__all__ = [
    "ONE_CLICK",
    "list_unsubscribe_headers",
    "unsubscribe_headers",
    "unsubscribe_token",
    "verify_token",
]

# The body a mailbox provider POSTs (form-encoded), and the List-Unsubscribe-Post value.
ONE_CLICK = "List-Unsubscribe=One-Click"
# Domain separation: a MAC made with the same secret for another purpose is never a token.
_CONTEXT = b"gateway-unsubscribe-v1\x00"
_MAX_TOKEN = 1024


def _secret_bytes(secret: SecretStr | str) -> bytes:
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return raw.encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: SecretStr | str, payload: bytes) -> bytes:
    return hmac.new(_secret_bytes(secret), _CONTEXT + payload, hashlib.sha256).digest()


def unsubscribe_token(secret: SecretStr | str, address: str, *, channel: str = "email") -> str:
    """The signed token for ``address`` (lower-cased) on ``channel``."""
    payload = f"{channel}\x00{address.lower()}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify_token(secret: SecretStr | str, token: str) -> tuple[str, str] | None:
    """``(channel, address)`` of a token this secret signed; ``None`` for anything else.

    The mac is compared in constant time, before the payload is read.
    """
    if len(token) > _MAX_TOKEN or token.count(".") != 1:
        return None
    payload_text, mac_text = token.split(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    if _b64(payload) != payload_text or _b64(mac) != mac_text:
        return None  # one spelling per token: no unused bits, no padding, no stray characters
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    channel, _, address = payload.decode("utf-8", "replace").partition("\x00")
    return channel, address


def list_unsubscribe_headers(
    public_url: str, address: str, secret: SecretStr | str, mailto: str | None
) -> dict[str, str]:
    """``List-Unsubscribe`` (the HTTPS link, then ``mailto:`` when given) and
    ``List-Unsubscribe-Post`` for an email to ``address``."""
    link = f"{public_url.rstrip('/')}/v1/unsubscribe/{unsubscribe_token(secret, address)}"
    targets = [f"<{link}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": ONE_CLICK}


def unsubscribe_headers(settings: Settings, address: str) -> dict[str, str]:
    """The headers for an email to ``address`` under ``settings``; none unless both
    ``GATEWAY_UNSUBSCRIBE_SECRET`` and ``GATEWAY_PUBLIC_URL`` are set."""
    if settings.unsubscribe_secret is None or settings.public_url is None:
        return {}
    return list_unsubscribe_headers(
        settings.public_url, address, settings.unsubscribe_secret, settings.unsubscribe_mailto
    )
