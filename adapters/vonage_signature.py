"""Vonage (Nexmo) SMS API signatures: the ``sig`` parameter of signed webhooks. Pure.

As Vonage documents it: every parameter but ``sig``, sorted by name; in each value ``&`` and
``=`` replaced by ``_``; joined as ``&name=value&name2=value2``. Then, by the account's
signature method: ``md5hash`` is the MD5 hex digest of that string followed by the signature
secret; ``md5``, ``sha1``, ``sha256`` and ``sha512`` are the HMAC of that string keyed with the
secret, upper-case hex. The comparison ignores case.

A signed webhook also carries ``timestamp`` (unix seconds); one further than
:data:`TOLERANCE_SECONDS` from our clock is refused, so a captured webhook cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["METHODS", "TOLERANCE_SECONDS", "compute_signature", "fresh", "validate_signature"]

METHODS = ("md5hash", "md5", "sha1", "sha256", "sha512")
TOLERANCE_SECONDS = 300
_HMAC_DIGESTS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
                 "sha512": hashlib.sha512}


def _signed_string(params: Mapping[str, str]) -> str:
    return "".join(
        f"&{name}={params[name].replace('&', '_').replace('=', '_')}"
        for name in sorted(params)
        if name != "sig"
    )


def compute_signature(params: Mapping[str, str], secret: str, method: str) -> str:
    """The ``sig`` Vonage sends for ``params`` (any ``sig`` among them is left out)."""
    text = _signed_string(params)
    if method == "md5hash":
        return hashlib.md5((text + secret).encode()).hexdigest()
    digest = _HMAC_DIGESTS.get(method)
    if digest is None:
        raise ValueError(f"unknown signature method {method!r}; one of {', '.join(METHODS)}")
    return hmac.new(secret.encode(), text.encode(), digest).hexdigest().upper()


def validate_signature(params: Mapping[str, str], secret: str, method: str) -> bool:
    """Whether ``params["sig"]`` is Vonage's signature of the other parameters."""
    given = params.get("sig", "").lower().encode()
    expected = compute_signature(params, secret, method).lower().encode()
    return hmac.compare_digest(expected, given)


def fresh(timestamp: str, *, now: float, tolerance: float = TOLERANCE_SECONDS) -> bool:
    """Whether ``timestamp`` (unix seconds, as text) is within ``tolerance`` of ``now``."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    return abs(now - int(timestamp)) <= tolerance
