"""A fake APNs: a real HTTP/2 server (the ``h2`` library on asyncio) on 127.0.0.1.

It checks what Apple checks: the ES256 provider token against the public key (``kid``, ``iss``,
an ``iat`` no older than an hour by its own clock), ``apns-topic``, ``apns-push-type`` with a
matching ``apns-priority`` and payload, and the 4096-byte limit. It records every request with
the TCP connection and stream it came on. Cleartext speaks HTTP/2 with prior knowledge; given an
``ssl.SSLContext`` it offers ``h2`` by ALPN.

Magic device tokens answer with one error each (see ``MAGIC``); ``__expired_provider_token__``
answers ``403 ExpiredProviderToken`` the first time only, and ``__hang__`` never answers.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# device token -> (status, reason, extra response headers)
MAGIC: dict[str, tuple[int, str, dict[str, str]]] = {
    "__unregistered__": (410, "Unregistered", {}),
    "__expired_token__": (410, "ExpiredToken", {}),
    "__bad_device_token__": (400, "BadDeviceToken", {}),
    "__too_many_requests__": (429, "TooManyRequests", {}),
    "__internal__": (500, "InternalServerError", {}),
    "__unavailable__": (503, "ServiceUnavailable", {"retry-after": "30"}),
    "__invalid_provider_token__": (403, "InvalidProviderToken", {}),
    "__bad_topic__": (400, "BadTopic", {}),
    "__not_for_topic__": (400, "DeviceTokenNotForTopic", {}),
    "__payload_too_large__": (413, "PayloadTooLarge", {}),
}
UNREGISTERED_AT_MS = 1_700_000_000_000


@dataclass
class ApnsRequest:
    """One request as the fake saw it, and what it answered."""

    connection: int
    stream_id: int
    device_token: str
    headers: dict[str, str]
    body: bytes
    jwt_header: dict[str, Any] | None = None
    jwt_claims: dict[str, Any] | None = None
    status: int = 0
    reason: str | None = None

    @property
    def payload(self) -> Any:
        """The JSON body."""
        return orjson.loads(self.body)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class FakeApns:
    """The server. ``await start()``, point the sender at ``url``, ``await close()``."""

    public_key: ec.EllipticCurvePublicKey
    key_id: str
    team_id: str
    topic: str
    clock: Callable[[], float] = time.time
    ssl_context: ssl.SSLContext | None = None
    latency: float = 0.0  # seconds before each answer, so streams overlap
    requests: list[ApnsRequest] = field(default_factory=list)
    connections: int = 0
    max_open_streams: int = 0
    _open_streams: int = 0
    _seen: set[str] = field(default_factory=set)
    _server: asyncio.Server | None = None
    _protocols: list[_H2Protocol] = field(default_factory=list)

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_protocol, "127.0.0.1", 0, ssl=self.ssl_context
        )

    @property
    def url(self) -> str:
        """The base URL to configure the sender with."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for protocol in self._protocols:
                protocol.abort()
            await self._server.wait_closed()

    def _new_protocol(self) -> _H2Protocol:
        self.connections += 1
        protocol = _H2Protocol(self, self.connections)
        self._protocols.append(protocol)
        return protocol

    def answer(self, request: ApnsRequest) -> tuple[int, str | None, dict[str, str]]:
        """What Apple would say: status, reason, extra headers."""
        problem = self._check_auth(request) or self._check_headers(request)
        if problem:
            return problem
        token = request.device_token
        if token == "__expired_provider_token__" and token not in self._seen:
            self._seen.add(token)
            return 403, "ExpiredProviderToken", {}
        if token in MAGIC:
            return MAGIC[token]
        return 200, None, {}

    def _check_auth(self, request: ApnsRequest) -> tuple[int, str, dict[str, str]] | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, "MissingProviderToken", {}
        try:
            header_b64, claims_b64, signature_b64 = auth.removeprefix("bearer ").split(".")
            request.jwt_header = orjson.loads(_b64decode(header_b64))
            request.jwt_claims = claims = orjson.loads(_b64decode(claims_b64))
            raw = _b64decode(signature_b64)
            signature = encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                             int.from_bytes(raw[32:], "big"))
            self.public_key.verify(signature, f"{header_b64}.{claims_b64}".encode(),
                                   ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature, orjson.JSONDecodeError):
            return 403, "InvalidProviderToken", {}
        header = request.jwt_header or {}
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            return 403, "InvalidProviderToken", {}
        if claims.get("iss") != self.team_id or not isinstance(claims.get("iat"), int):
            return 403, "InvalidProviderToken", {}
        if self.clock() - claims["iat"] > 3600:
            return 403, "ExpiredProviderToken", {}
        return None

    def _check_headers(self, request: ApnsRequest) -> tuple[int, str, dict[str, str]] | None:
        headers = request.headers
        if len(request.body) > 4096:
            return 413, "PayloadTooLarge", {}
        if "apns-topic" not in headers:
            return 400, "MissingTopic", {}
        if headers["apns-topic"] != self.topic:
            return 400, "DeviceTokenNotForTopic", {}
        push_type = headers.get("apns-push-type")
        priority = headers.get("apns-priority", "10")
        if push_type not in ("alert", "background") or priority not in ("1", "5", "10"):
            return 400, "InvalidPushType" if priority in ("1", "5", "10") else "BadPriority", {}
        try:
            aps = request.payload.get("aps", {})
        except (orjson.JSONDecodeError, AttributeError):
            return 400, "PayloadEmpty", {}
        if push_type == "background" and (priority != "5" or aps != {"content-available": 1}):
            return 400, "BadPriority" if priority != "5" else "PayloadEmpty", {}
        if push_type == "alert" and "alert" not in aps:
            return 400, "PayloadEmpty", {}
        return None


class _H2Protocol(asyncio.Protocol):
    """One TCP connection: HTTP/2 framing by ``h2``, each finished stream answered by a task."""

    def __init__(self, fake: FakeApns, number: int) -> None:
        self._fake = fake
        self._number = number
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                headers = {str(k): str(v) for k, v in event.headers or []}
                self._streams[event.stream_id] = (headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                self._streams[event.stream_id][1].extend(event.data or b"")
                self._conn.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = self._streams.pop(event.stream_id)
                task = asyncio.ensure_future(self._answer(event.stream_id, headers, bytes(body)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.abort()
        self._flush()

    async def _answer(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        fake = self._fake
        path = headers.get(":path", "")
        request = ApnsRequest(self._number, stream_id, path.removeprefix("/3/device/"),
                              headers, body)
        fake.requests.append(request)
        fake._open_streams += 1
        fake.max_open_streams = max(fake.max_open_streams, fake._open_streams)
        try:
            if request.device_token == "__hang__":
                await asyncio.sleep(3600)
            if fake.latency:
                await asyncio.sleep(fake.latency)
            answer: tuple[int, str | None, dict[str, str]] = (405, "MethodNotAllowed", {})
            if headers.get(":method") == "POST" and path.startswith("/3/device/"):
                answer = fake.answer(request)
            status, reason, extra = answer
        finally:
            fake._open_streams -= 1
        request.status, request.reason = status, reason
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        response_body = b""
        if reason is not None:
            error: dict[str, Any] = {"reason": reason}
            if status == 410:
                error["timestamp"] = UNREGISTERED_AT_MS
            response_body = orjson.dumps(error)
        response_headers = [(":status", str(status)), ("apns-id", apns_id), *extra.items()]
        try:
            self._conn.send_headers(stream_id, response_headers, end_stream=not response_body)
            if response_body:
                self._conn.send_data(stream_id, response_body, end_stream=True)
        except h2.exceptions.H2Error:
            return  # the client reset the stream meanwhile
        self._flush()

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._conn.data_to_send())

    def abort(self) -> None:
        """Drop the connection and its pending answers."""
        for task in self._tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()
