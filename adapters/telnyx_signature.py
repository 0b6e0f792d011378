"""Telnyx webhook signatures (``telnyx-signature-ed25519``, ``telnyx-timestamp``). Pure.

Telnyx signs ``"{timestamp}|{raw body}"`` with Ed25519; the account's public key (Mission
Control, "Public Key") is the base64 of the 32 raw key bytes. A request older or newer than
:data:`TOLERANCE_SECONDS` is refused even when signed, so a captured webhook cannot be replayed
later.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["TOLERANCE_SECONDS", "load_public_key", "refusal"]

TOLERANCE_SECONDS = 300


def load_public_key(text: str) -> Ed25519PublicKey:
    """The key from its base64 form; raise ``ValueError`` when it is not 32 bytes of base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def refusal(
    key: Ed25519PublicKey,
    *,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> str | None:
    """Why the request must be refused, or ``None`` when it is signed and fresh."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return "telnyx-timestamp is missing or not a unix time"
    if abs(now - int(timestamp)) > tolerance:
        return f"telnyx-timestamp is more than {tolerance:g} s away from our clock"
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, timestamp.encode() + b"|" + body)
    except (binascii.Error, InvalidSignature):
        return "telnyx-signature-ed25519 does not match"
    return None
