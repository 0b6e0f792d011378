"""Compact JSON Web Tokens signed with ES256 (APNs provider tokens) or RS256 (Google OAuth2).

Just the signing side, on ``cryptography``: the push adapters mint their own tokens and never
verify anyone else's, so a full JWT library would be mostly unused surface. ES256 signatures
are the raw 64-byte ``r || s`` concatenation of RFC 7518 §3.4, not the DER that
``cryptography`` produces, hence the conversion.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

_P256_BYTES = 32


def b64url(data: bytes) -> str:
    """Base64url without padding, as every JWT segment is written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
    return f"{b64url(orjson.dumps(dict(header)))}.{b64url(orjson.dumps(dict(claims)))}".encode()


def load_es256_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of an APNs ``.p8`` file; ``ValueError`` if it is anything else."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 (ES256) private key")
    return key


def load_rs256_key(pem: bytes) -> rsa.RSAPrivateKey:
    """The RSA private key of a Google service account; ``ValueError`` if it is anything else."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA (RS256) private key")
    return key


def sign_es256(
    key: ec.EllipticCurvePrivateKey, claims: Mapping[str, Any], *, kid: str
) -> str:
    """A JWT with header ``{"alg": "ES256", "kid": kid}`` over ``claims``."""
    signing_input = _signing_input({"alg": "ES256", "kid": kid}, claims)
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


def sign_rs256(key: rsa.RSAPrivateKey, claims: Mapping[str, Any]) -> str:
    """A JWT with header ``{"alg": "RS256", "typ": "JWT"}`` over ``claims``."""
    signing_input = _signing_input({"alg": "RS256", "typ": "JWT"}, claims)
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url(signature)}"
