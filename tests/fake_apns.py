"""A fake APNs: a real HTTP/2 server (the ``h2`` library on asyncio) on 127.0.0.1.

It checks what Apple checks: the ES256 provider token against the public key (``kid``, ``iss``,
an ``iat`` no older than an hour by its own clock), ``apns-topic``, ``apns-push-type`` with a
matching ``apns-priority`` and payload, and the 4096-byte limit. It records every request with
the TCP connection and stream it came on. Cleartext speaks HTTP/2 with prior knowledge; given an
``ssl.SSLContext`` it offers ``h2`` by ALPN.

Magic device tokens answer with one error each (see ``MAGIC``); ``__expired_provider_token__``
answers ``403 ExpiredProviderToken`` the first time only, ``__hang__`` never answers,
``__freeze__`` makes the connection ignore everything from then on (PINGs too), as if a
firewall had dropped it, ``__drop_connection__`` drops the TCP connection, and
``__verbose_error__`` answers 400 with a 4 KB body (to use up the client's receive window unless
it acknowledges what it reads).

Options make it a harsher server: ``max_concurrent_streams`` and ``initial_window_size`` go in
its SETTINGS; ``goaway_after=n`` sends GOAWAY (reason ``Shutdown``) on the n-th request of the
first connection, answers the streams up to that one, ignores the later ones and then closes.
It records the RST_STREAM codes and the GOAWAYs it receives.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hyperframe.frame import GoAwayFrame

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
    "__verbose_error__": (400, "BadPriority", {}),
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
    data_frames: int = 0  # DATA frames the body came in

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
    port: int = 0  # 0: any free port
    max_concurrent_streams: int | None = None  # SETTINGS_MAX_CONCURRENT_STREAMS, if set
    initial_window_size: int | None = None  # SETTINGS_INITIAL_WINDOW_SIZE, if set
    goaway_after: int | None = None  # GOAWAY on this request of the first connection
    requests: list[ApnsRequest] = field(default_factory=list)
    connections: int = 0
    max_open_streams: int = 0
    resets: list[int] = field(default_factory=list)  # RST_STREAM error codes received
    goaways: list[int] = field(default_factory=list)  # GOAWAY error codes received
    _open_streams: int = 0
    _seen: set[str] = field(default_factory=set)
    _tokens: dict[str, tuple[dict[str, Any], dict[str, Any]] | None] = field(
        default_factory=dict
    )
    _server: asyncio.Server | None = None
    _protocols: list[_H2Protocol] = field(default_factory=list)

    async def start(self) -> None:
        """Listen on 127.0.0.1 (``port``, or a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_protocol, "127.0.0.1", self.port, ssl=self.ssl_context
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
        # The same token comes on every request for most of an hour: verify it once.
        if auth not in self._tokens:
            self._tokens[auth] = self._verify(auth.removeprefix("bearer "))
        verified = self._tokens[auth]
        if verified is None:
            return 403, "InvalidProviderToken", {}
        request.jwt_header, request.jwt_claims = header, claims = verified
        if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
            return 403, "InvalidProviderToken", {}
        if claims.get("iss") != self.team_id or not isinstance(claims.get("iat"), int):
            return 403, "InvalidProviderToken", {}
        if self.clock() - claims["iat"] > 3600:
            return 403, "ExpiredProviderToken", {}
        return None

    def _verify(self, token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The JWT's header and claims if its ES256 signature is the team key's, else None."""
        try:
            header_b64, claims_b64, signature_b64 = token.split(".")
            header, claims = orjson.loads(_b64decode(header_b64)), orjson.loads(
                _b64decode(claims_b64))
            raw = _b64decode(signature_b64)
            signature = encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                             int.from_bytes(raw[32:], "big"))
            self.public_key.verify(signature, f"{header_b64}.{claims_b64}".encode(),
                                   ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature, orjson.JSONDecodeError):
            return None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return None
        return header, claims

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
        codes = h2.settings.SettingCodes
        settings = {codes(code): value for code, value in self._conn.local_settings.items()}
        if fake.max_concurrent_streams is not None:  # h2's default is 100
            settings[codes.MAX_CONCURRENT_STREAMS] = fake.max_concurrent_streams
        if fake.initial_window_size is not None:
            settings[codes.INITIAL_WINDOW_SIZE] = fake.initial_window_size
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[dict[str, str], bytearray, list[int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._received = 0
        self._last_stream_id: int | None = None  # set once we have sent GOAWAY
        self._frozen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._conn.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._frozen:
            return
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event)
            elif isinstance(event, h2.events.DataReceived):
                # Acknowledge even what is ignored: it counts against the connection window.
                self._conn.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
                if event.stream_id in self._streams:
                    _, body, frames = self._streams[event.stream_id]
                    body.extend(event.data or b"")
                    frames[0] += 1
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self._streams:
                    headers, body, frames = self._streams.pop(event.stream_id)
                    self._spawn(self._answer(event.stream_id, headers, bytes(body), frames[0]))
            elif isinstance(event, h2.events.StreamReset):
                self._fake.resets.append(int(event.error_code or 0))
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fake.goaways.append(int(event.error_code or 0))
                self.abort()
        self._flush()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        if self._last_stream_id is not None:
            return  # after our GOAWAY: not processed, never answered
        headers = {str(k): str(v) for k, v in event.headers or []}
        if headers.get(":path", "").endswith("/__freeze__"):
            self._frozen = True
            return
        self._streams[event.stream_id] = (headers, bytearray(), [0])
        self._received += 1
        fake = self._fake
        if self._number == 1 and fake.goaway_after == self._received:
            self._last_stream_id = event.stream_id
            self._flush()
            # Written by hand: h2 would refuse to send the answers to the streams it spares.
            goaway = GoAwayFrame(0, last_stream_id=event.stream_id, error_code=0,
                                 additional_data=b'{"reason":"Shutdown"}')
            assert self._transport is not None
            self._transport.write(goaway.serialize())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._last_stream_id is not None and not self._tasks and self._transport is not None:
            self._transport.close()  # GOAWAY sent and every spared stream answered

    async def _answer(self, stream_id: int, headers: dict[str, str], body: bytes,
                      data_frames: int) -> None:
        fake = self._fake
        path = headers.get(":path", "")
        request = ApnsRequest(self._number, stream_id, path.removeprefix("/3/device/"),
                              headers, body, data_frames=data_frames)
        fake.requests.append(request)
        if request.device_token == "__drop_connection__":
            self.abort()
            return
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
            if request.device_token == "__verbose_error__":
                error["detail"] = "x" * 4096
            response_body = orjson.dumps(error)
        response_headers = [(":status", str(status)), ("apns-id", apns_id), *extra.items()]
        try:
            self._conn.send_headers(stream_id, response_headers, end_stream=not response_body)
            if response_body:
                self._conn.send_data(stream_id, response_body, end_stream=True)
        except h2.exceptions.H2Error:
            return  # the client reset the stream meanwhile (or its window is shut)
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
