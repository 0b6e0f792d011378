"""A fake FCM: a small aiohttp app serving Google's token endpoint and FCM's messages:send.

The token endpoint verifies the RS256 assertion with the service account's public key and its
claims (``iss``, ``scope``, ``aud``, ``iat``/``exp``), counts the requests and hands out access
tokens that expire after ``expires_in`` seconds of its clock. messages:send checks the bearer
token, that data values are strings and the 4096-byte limit, and records each message.

Magic device tokens answer with one FCM error each (see ``MAGIC``); ``__unauthenticated_once__``
revokes the access token it came with the first time (401), ``__hang__`` never answers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# device token -> (HTTP status, status, errorCode, message, extra headers)
MAGIC: dict[str, tuple[int, str, str, str, dict[str, str]]] = {
    "__unregistered__": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.", {}),
    "__invalid_token__": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                          "The registration token is not a valid FCM registration token", {}),
    "__invalid_argument__": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                             "Invalid value at 'message.android.ttl'", {}),
    "__quota_exceeded__": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED",
                           "Quota exceeded for this device.", {"Retry-After": "60"}),
    "__unavailable__": (503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable.",
                        {"Retry-After": "10"}),
    "__internal__": (500, "INTERNAL", "INTERNAL", "Internal error encountered.", {}),
    "__sender_id_mismatch__": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH",
                               "SenderId mismatch", {}),
    "__third_party_auth__": (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR",
                             "Auth error from APNS or Web Push Service", {}),
}


@dataclass
class FcmRequest:
    """One messages:send as the fake saw it, and its answer."""

    access_token: str
    body: dict[str, Any]
    status: int = 0

    @property
    def message(self) -> dict[str, Any]:
        """The ``message`` object."""
        message: dict[str, Any] = self.body["message"]
        return message


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _error(status: int, name: str, message: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if code:
        error["details"] = [{"@type": FCM_ERROR_TYPE, "errorCode": code}]
    return web.json_response({"error": error}, status=status, headers=headers,
                             dumps=lambda v: orjson.dumps(v).decode())


@dataclass
class FakeFcm:
    """The server. ``await start()``, configure ``url`` and ``token_url``, ``await close()``."""

    public_key: rsa.RSAPublicKey
    client_email: str
    project_id: str
    clock: Callable[[], float] = time.time
    expires_in: int = 3599
    token_latency: float = 0.0  # seconds the token endpoint takes, so callers pile up
    token_requests: int = 0
    requests: list[FcmRequest] = field(default_factory=list)
    _issued: dict[str, float] = field(default_factory=dict)  # access token -> expiry
    _seen: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _port: int = 0

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Stop the server."""
        self._closing.set()  # release hung handlers, or cleanup waits for them
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """FCM's base URL."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint."""
        return f"{self.url}/token"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every message accepted, in order."""
        return [r.message for r in self.requests if r.status == 200]

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.token_latency:
            await asyncio.sleep(self.token_latency)
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        problem = self._check_assertion(str(form.get("assertion", "")))
        if problem:
            return web.json_response({"error": "invalid_grant", "error_description": problem},
                                     status=400)
        access_token = f"ya29.fake-{self.token_requests}"
        self._issued[access_token] = self.clock() + self.expires_in
        return web.json_response({"access_token": access_token, "expires_in": self.expires_in,
                                  "token_type": "Bearer"})

    def _check_assertion(self, assertion: str) -> str | None:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = orjson.loads(_b64decode(header_b64))
            claims = orjson.loads(_b64decode(claims_b64))
            self.public_key.verify(_b64decode(signature_b64),
                                   f"{header_b64}.{claims_b64}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature, orjson.JSONDecodeError):
            return "Invalid JWT Signature."
        now = self.clock()
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg"
        if claims.get("iss") != self.client_email:
            return "Invalid JWT: iss"
        if claims.get("scope") != SCOPE or claims.get("aud") != self.token_url:
            return "Invalid JWT: scope or aud"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600:
            return "Invalid JWT: iat/exp"
        if iat > now + 60 or exp < now:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        return None

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        access_token = auth.removeprefix("Bearer ")
        body = orjson.loads(await request.read())
        recorded = FcmRequest(access_token, body)
        self.requests.append(recorded)
        response = await self._answer(request, recorded)
        recorded.status = response.status
        return response

    async def _answer(self, request: web.Request, recorded: FcmRequest) -> web.Response:
        if request.match_info["project"] != self.project_id:
            return _error(403, "PERMISSION_DENIED", "Permission denied on the project.")
        if self._issued.get(recorded.access_token, 0) <= self.clock():
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        message = recorded.body.get("message", {})
        token = message.get("token")
        if token == "__hang__":
            await self._closing.wait()
            return _error(503, "UNAVAILABLE", "Shutting down.")
        if token == "__unauthenticated_once__" and token not in self._seen:
            self._seen.add(token)
            del self._issued[recorded.access_token]  # revoked, as if rotated server-side
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if token in MAGIC:
            status, name, code, text, headers = MAGIC[token]
            return _error(status, name, text, code, headers)
        data = message.get("data", {})
        if not all(isinstance(v, str) for v in data.values()):
            return _error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data'",
                          "INVALID_ARGUMENT")
        payload = {k: message[k] for k in ("notification", "data") if k in message}
        if len(orjson.dumps(payload)) > 4096:
            return _error(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT")
        name = f"projects/{self.project_id}/messages/{next(self._ids)}"
        return web.json_response({"name": name})
