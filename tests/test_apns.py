"""The APNs adapter against a local HTTP/2 fake that verifies its provider token."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import hpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from h2.errors import ErrorCodes
from hypothesis import given
from hypothesis import strategies as st

from adapters import h2client
from adapters.apns import ApnsConfig, ApnsSender, build_headers, classify, load_apns_config
from adapters.base import OutboundPush
from adapters.errors import InvalidTokenError, PermanentSendError, TransientSendError
from adapters.h2client import LiteralHpackEncoder
from tests.fake_apns import FakeApns

KEY_ID = "ABC123DEFG"
TEAM_ID = "TEAM123456"
TOPIC = "com.example.app"
DEVICE = "a" * 64


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def p256_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def apns_key() -> ec.EllipticCurvePrivateKey:
    """The P-256 key pair standing in for a .p8 key."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def clock() -> Clock:
    """A clock shared by the sender and the fake."""
    return Clock()


Factory = Callable[..., Awaitable[tuple[FakeApns, ApnsSender]]]


@pytest.fixture
async def make_apns(apns_key: ec.EllipticCurvePrivateKey, clock: Clock) -> AsyncIterator[Factory]:
    """Start a fake APNs and a sender pointed at it; close both at the end."""
    made: list[tuple[FakeApns, ApnsSender]] = []

    async def make(*, fake_options: dict[str, Any] | None = None, **config: Any) -> tuple[
        FakeApns, ApnsSender
    ]:
        fake = FakeApns(public_key=apns_key.public_key(), key_id=KEY_ID, team_id=TEAM_ID,
                        topic=TOPIC, clock=clock, **(fake_options or {}))
        await fake.start()
        options: dict[str, Any] = {"base_url": fake.url, "key_pem": p256_pem(apns_key),
                                   "key_id": KEY_ID, "team_id": TEAM_ID, "topic": TOPIC,
                                   "timeout": 5.0}
        sender = ApnsSender(ApnsConfig(**{**options, **config}), clock=clock)
        made.append((fake, sender))
        return fake, sender

    yield make
    for fake, sender in made:
        await sender.close()
        await fake.close()


def push(to: str = DEVICE, **fields: Any) -> OutboundPush:
    values: dict[str, Any] = {"message_id": "msg-1", "to": to, "title": "Hello",
                              "body": "Your order shipped", "data": None}
    return OutboundPush(**{**values, **fields})


async def test_alert_push_carries_headers_payload_and_data(make_apns: Factory) -> None:
    """An alert goes as push type alert, priority 10, with expiry, collapse id and top-level data."""
    fake, sender = await make_apns()
    message_id = str(uuid.uuid4())
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    result = await sender.send(push(message_id=message_id, data={"order": 42, "tags": ["a"]},
                                    expires_at=expires, collapse_id="order-42"))

    [request] = fake.requests
    assert request.status == 200
    assert request.device_token == DEVICE
    assert request.headers["apns-topic"] == TOPIC
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-expiration"] == str(int(expires.timestamp()))
    assert request.headers["apns-collapse-id"] == "order-42"
    assert request.payload == {"aps": {"alert": {"title": "Hello", "body": "Your order shipped"}},
                               "order": 42, "tags": ["a"]}
    assert result.provider_message_id == message_id


async def test_silent_push_is_background_at_priority_5(make_apns: Factory) -> None:
    """A silent push is push type background, priority 5, with only content-available in aps."""
    fake, sender = await make_apns()
    result = await sender.send(push(silent=True, title=None, body=None, data={"sync": True}))

    [request] = fake.requests
    assert request.status == 200
    assert request.headers["apns-push-type"] == "background"
    assert request.headers["apns-priority"] == "5"
    assert "apns-expiration" not in request.headers
    assert request.payload == {"aps": {"content-available": 1}, "sync": True}
    assert result.provider_message_id  # the fake's own apns-id, as Apple gives one


async def test_provider_token_is_verified_and_reused(make_apns: Factory, clock: Clock) -> None:
    """The fake verifies the ES256 token's signature, kid and iss, and sees one token reused."""
    fake, sender = await make_apns()
    await sender.send(push())
    clock.now += 49 * 60
    await sender.send(push())

    first, second = fake.requests
    assert (first.status, second.status) == (200, 200)
    assert first.jwt_header == {"alg": "ES256", "kid": KEY_ID}
    assert first.jwt_claims == {"iss": TEAM_ID, "iat": 1_800_000_000}
    assert first.headers["authorization"] == second.headers["authorization"]


async def test_provider_token_is_renewed_after_50_minutes(make_apns: Factory, clock: Clock) -> None:
    """Once the clock passes 50 minutes the sender signs a new token with a new iat."""
    fake, sender = await make_apns()
    await sender.send(push())
    clock.now += 50 * 60 + 1
    await sender.send(push())

    first, second = fake.requests
    assert second.status == 200
    assert first.headers["authorization"] != second.headers["authorization"]
    assert second.jwt_claims == {"iss": TEAM_ID, "iat": 1_800_000_000 + 50 * 60 + 1}


async def test_expired_provider_token_is_renewed_and_the_push_retried(make_apns: Factory) -> None:
    """403 ExpiredProviderToken makes the sender sign a new token and send that push again."""
    fake, sender = await make_apns()
    await sender.send(push())
    await sender.send(push(to="__expired_provider_token__"))
    await sender.send(push())

    tokens = [r.headers["authorization"] for r in fake.requests]
    assert [r.status for r in fake.requests] == [200, 403, 200, 200]
    assert fake.requests[1].reason == "ExpiredProviderToken"
    assert tokens[0] == tokens[1] != tokens[2] == tokens[3]


async def test_hundred_concurrent_pushes_share_one_http2_connection(make_apns: Factory) -> None:
    """100 concurrent sends are 100 streams on one TCP connection, many open at once."""
    fake, sender = await make_apns(fake_options={"latency": 0.05})
    results = await asyncio.gather(*(sender.send(push(message_id=str(uuid.uuid4())))
                                     for _ in range(100)))

    assert len(results) == 100
    assert fake.connections == 1
    assert {r.connection for r in fake.requests} == {1}
    assert len({r.stream_id for r in fake.requests}) == 100
    assert fake.max_open_streams >= 50
    assert len({r.headers["authorization"] for r in fake.requests}) == 1


@pytest.mark.parametrize(
    ("device", "error", "words", "retry_after"),
    [
        ("__unregistered__", InvalidTokenError, "410 Unregistered (token inactive since 2023", None),
        ("__expired_token__", InvalidTokenError, "410 ExpiredToken", None),
        ("__bad_device_token__", InvalidTokenError, "BadDeviceToken", None),
        ("__too_many_requests__", TransientSendError, "429 TooManyRequests", None),
        ("__internal__", TransientSendError, "500 InternalServerError", None),
        ("__unavailable__", TransientSendError, "503 ServiceUnavailable", 30.0),
        ("__invalid_provider_token__", PermanentSendError, "GATEWAY_APNS_KEY_ID", None),
        ("__bad_topic__", PermanentSendError, "set GATEWAY_APNS_TOPIC", None),
        ("__not_for_topic__", PermanentSendError, "DeviceTokenNotForTopic", None),
        ("__payload_too_large__", PermanentSendError, "413 PayloadTooLarge", None),
    ],
)
async def test_apns_refusals_map_onto_our_errors(
    make_apns: Factory, device: str, error: type[Exception], words: str, retry_after: float | None
) -> None:
    """Each APNs refusal raises the error that tells the pipeline what to do, with a useful reason."""
    _, sender = await make_apns()
    with pytest.raises(error) as raised:
        await sender.send(push(to=device))
    assert type(raised.value) is error
    assert words in raised.value.reason  # type: ignore[attr-defined]
    assert raised.value.retry_after == retry_after  # type: ignore[attr-defined]


async def test_wrong_topic_is_refused_for_good(make_apns: Factory) -> None:
    """A topic other than the app's is refused as DeviceTokenNotForTopic: permanent."""
    fake, sender = await make_apns(topic="com.example.other")
    with pytest.raises(PermanentSendError, match="DeviceTokenNotForTopic"):
        await sender.send(push())
    assert fake.requests[0].status == 400


async def test_token_signed_with_another_key_is_a_configuration_error(make_apns: Factory) -> None:
    """A .p8 key that is not the team's gets InvalidProviderToken with a hint to ops."""
    other = p256_pem(ec.generate_private_key(ec.SECP256R1()))
    _, sender = await make_apns(key_pem=other)
    with pytest.raises(PermanentSendError, match="check GATEWAY_APNS_KEY_ID") as raised:
        await sender.send(push())
    assert type(raised.value) is PermanentSendError


async def test_payload_over_4096_bytes_fails_before_sending(make_apns: Factory) -> None:
    """A payload over 4 KiB is refused for good and nothing reaches APNs."""
    fake, sender = await make_apns()
    with pytest.raises(PermanentSendError, match="over the 4096-byte limit"):
        await sender.send(push(data={"blob": "x" * 4096}))
    assert fake.requests == []


async def test_expired_push_fails_before_sending(make_apns: Factory) -> None:
    """A push whose expires_at has passed is refused for good without a request."""
    fake, sender = await make_apns()
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(PermanentSendError, match="expired"):
        await sender.send(push(expires_at=past))
    assert fake.requests == []


async def test_unanswered_request_times_out_as_transient(make_apns: Factory) -> None:
    """A stream APNs never answers becomes a transient failure after the timeout."""
    _, sender = await make_apns(timeout=0.3)
    with pytest.raises(TransientSendError, match="timed out"):
        await sender.send(push(to="__hang__"))


async def test_refused_connection_is_transient(make_apns: Factory) -> None:
    """Nothing listening at the base URL is a transient failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, sender = await make_apns(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientSendError, match="connection problem"):
        await sender.send(push())


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake APNs")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(p256_pem(key))
    return cert_file, key_file


async def test_https_negotiates_http2_and_verifies_against_ca_file(
    make_apns: Factory, tmp_path: Path
) -> None:
    """Over TLS the sender trusts ca_file, negotiates h2 by ALPN and is answered."""
    cert_file, key_file = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    server_tls.set_alpn_protocols(["h2"])
    fake, sender = await make_apns(fake_options={"ssl_context": server_tls},
                                   ca_file=str(cert_file))
    assert fake.url.startswith("https://")
    await asyncio.gather(sender.send(push()), sender.send(push()))
    assert [r.status for r in fake.requests] == [200, 200]
    assert fake.connections == 1


async def test_https_without_the_ca_file_fails_as_transient(
    make_apns: Factory, tmp_path: Path
) -> None:
    """A certificate the sender cannot verify is a connection problem, never ignored."""
    cert_file, key_file = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    server_tls.set_alpn_protocols(["h2"])
    fake, sender = await make_apns(fake_options={"ssl_context": server_tls})
    with pytest.raises(TransientSendError, match="connection problem"):
        await sender.send(push())
    assert fake.requests == []


def test_load_apns_config_checks_the_key_and_the_names(apns_key: ec.EllipticCurvePrivateKey) -> None:
    """load_apns_config accepts a P-256 .p8 key and names what is missing or wrong."""
    pem = p256_pem(apns_key)
    config = load_apns_config(pem, key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC,
                              base_url="http://127.0.0.1:1")
    assert (config.key_id, config.team_id, config.topic) == (KEY_ID, TEAM_ID, TOPIC)
    with pytest.raises(ValueError, match="APNs team id, topic not set"):
        load_apns_config(pem, key_id=KEY_ID, team_id=None, topic="")
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(ValueError, match="not a P-256"):
        load_apns_config(rsa_pem, key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC)
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_apns_config(b"garbage", key_id=KEY_ID, team_id=TEAM_ID, topic=TOPIC)


# --- the HTTP/2 transport: stream limits, flow control, GOAWAY, timeouts, lost connections ---


async def test_server_stream_limit_makes_sends_wait_for_a_free_stream(make_apns: Factory) -> None:
    """With SETTINGS_MAX_CONCURRENT_STREAMS 5, 50 concurrent sends all succeed, 5 at a time."""
    fake, sender = await make_apns(fake_options={"max_concurrent_streams": 5, "latency": 0.02})
    results = await asyncio.gather(*(sender.send(push()) for _ in range(50)))

    assert len(results) == 50
    assert [r.status for r in fake.requests] == [200] * 50
    assert fake.max_open_streams == 5
    assert fake.connections == 1


@pytest.mark.parametrize("latency", [0.0, 0.05])  # answers in GOAWAY's read, or later ones
async def test_goaway_fails_unprocessed_streams_and_the_next_send_reconnects(
    make_apns: Factory, latency: float
) -> None:
    """Streams above GOAWAY's last stream id fail as transient; those below are answered."""
    fake, sender = await make_apns(fake_options={"goaway_after": 5, "latency": latency})
    results = await asyncio.gather(*(sender.send(push()) for _ in range(10)),
                                   return_exceptions=True)

    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(answered) == 5
    assert sorted(r.stream_id for r in fake.requests) == [1, 3, 5, 7, 9]
    for error in refused:
        assert type(error) is TransientSendError
        assert "GOAWAY NO_ERROR" in error.reason and "not processed" in error.reason
        assert "Shutdown" in error.reason

    await sender.send(push())
    assert fake.connections == 2
    assert (fake.requests[-1].connection, fake.requests[-1].status) == (2, 200)


async def test_dropped_connection_fails_in_flight_sends_as_transient(make_apns: Factory) -> None:
    """A connection lost mid-answer fails every send in flight as transient; the next reconnects."""
    fake, sender = await make_apns(fake_options={"latency": 0.05})
    results = await asyncio.gather(sender.send(push(to="__drop_connection__")),
                                   *(sender.send(push()) for _ in range(4)),
                                   return_exceptions=True)

    for error in results:
        assert type(error) is TransientSendError
        assert "APNs connection problem: connection lost" in error.reason
    await sender.send(push())
    assert fake.connections == 2


async def test_unanswered_stream_is_reset_and_the_connection_kept(make_apns: Factory) -> None:
    """At the timeout the stream is reset with CANCEL; the connection carries the next push."""
    fake, sender = await make_apns(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientSendError, match="APNs timed out: no answer in time"):
        await sender.send(push(to="__hang__"))
    assert time.monotonic() - started < 2

    await sender.send(push())
    assert fake.resets == [ErrorCodes.CANCEL]
    assert fake.connections == 1
    assert fake.requests[-1].status == 200


async def test_connection_gone_silent_is_pinged_and_replaced(make_apns: Factory) -> None:
    """After a push times out on a connection that has said nothing since, a PING checks it;
    unanswered, the connection is dropped and the next push makes a new one."""
    fake, sender = await make_apns(timeout=0.3)
    await sender.send(push())
    with pytest.raises(TransientSendError, match="APNs timed out"):
        await sender.send(push(to="__freeze__"))
    await asyncio.sleep(0.5)  # the PING's 0.3 s run out

    await sender.send(push())
    assert fake.connections == 2
    assert [(r.connection, r.status) for r in fake.requests] == [(1, 200), (2, 200)]


async def test_wait_for_a_free_stream_is_bounded_and_cancelling_frees_the_stream(
    make_apns: Factory,
) -> None:
    """Behind a stream that never ends, a request times out waiting; cancelling the first resets
    it (RST_STREAM CANCEL) and its stream goes to the next request."""
    fake, _ = await make_apns(fake_options={"max_concurrent_streams": 1})
    client = h2client.H2Client(fake.url, ssl_context=None, connect_timeout=1.0)
    try:
        blocker = asyncio.ensure_future(
            client.request("POST", "/3/device/__hang__", [], b"{}", timeout=30)
        )
        while not fake.requests:
            await asyncio.sleep(0.01)
        with pytest.raises(h2client.H2TimeoutError, match="no free stream in time"):
            await client.request("POST", f"/3/device/{DEVICE}", [], b"{}", timeout=0.2)

        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        answer = await client.request("POST", f"/3/device/{DEVICE}", [], b"{}", timeout=2)
        assert answer.status == 403  # no provider token: answered, on the freed stream
        assert fake.resets == [ErrorCodes.CANCEL]
        assert fake.connections == 1
    finally:
        await client.close()


async def test_server_that_never_speaks_http2_times_out(make_apns: Factory) -> None:
    """A server that accepts the connection and says nothing is a timeout, not a hang."""
    # A bare Protocol: reads and ignores everything, closes when the client does.
    silent = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        _, sender = await make_apns(base_url=f"http://127.0.0.1:{port}", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransientSendError, match="APNs timed out: no HTTP/2 connection"):
            await sender.send(push())
        assert time.monotonic() - started < 2
    finally:
        silent.close()


async def test_refused_connection_is_retried_on_the_next_send(
    make_apns: Factory, apns_key: ec.EllipticCurvePrivateKey, clock: Clock
) -> None:
    """After a refused connection, the next send connects again (once APNs listens)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, sender = await make_apns(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(TransientSendError, match="connection problem: cannot connect"):
        await sender.send(push())

    fake = FakeApns(public_key=apns_key.public_key(), key_id=KEY_ID, team_id=TEAM_ID,
                    topic=TOPIC, clock=clock, port=port)
    await fake.start()
    try:
        await sender.send(push())
        assert [r.status for r in fake.requests] == [200]
    finally:
        await sender.close()
        await fake.close()


async def test_request_body_waits_for_window_updates(make_apns: Factory) -> None:
    """With a 100-byte initial window a 1 KB payload goes in pieces, each after a WINDOW_UPDATE."""
    fake, sender = await make_apns(fake_options={"initial_window_size": 100})
    data = {"blob": "x" * 1000}
    await asyncio.gather(sender.send(push(data=data)), sender.send(push(data=data)))

    for request in fake.requests:
        assert request.status == 200
        assert request.payload["blob"] == "x" * 1000
        assert request.data_frames >= 10


async def test_received_data_is_acknowledged(make_apns: Factory) -> None:
    """Answers totalling more than the 64 KiB receive window all arrive: the client gives it back."""
    _, sender = await make_apns(timeout=2.0)
    for _ in range(40):  # 40 x 4 KB bodies
        with pytest.raises(PermanentSendError, match="APNs 400 BadPriority"):
            await sender.send(push(to="__verbose_error__"))


async def test_close_says_goaway_and_later_sends_fail_as_transient(make_apns: Factory) -> None:
    """close() sends GOAWAY and closes the socket; a send after it is refused as transient."""
    fake, sender = await make_apns()
    await sender.send(push())
    await sender.close()
    for _ in range(100):
        if fake.goaways:
            break
        await asyncio.sleep(0.01)
    assert fake.goaways == [ErrorCodes.NO_ERROR]
    with pytest.raises(TransientSendError, match="the client is closed"):
        await sender.send(push())


async def test_connection_is_replaced_before_stream_ids_run_out(
    make_apns: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the last stream id it will use, a connection is retired and a new one made."""
    monkeypatch.setattr(h2client, "RETIRE_AFTER_STREAM_ID", 5)
    fake, sender = await make_apns()
    for _ in range(5):
        await sender.send(push())
    assert [(r.connection, r.stream_id) for r in fake.requests] == [
        (1, 1), (1, 3), (1, 5), (2, 1), (2, 3)
    ]
    assert fake.goaways == [ErrorCodes.NO_ERROR]  # the retired connection was closed politely


async def test_https_server_without_h2_alpn_is_a_connection_problem(
    make_apns: Factory, tmp_path: Path
) -> None:
    """A TLS server that does not agree to h2 by ALPN is refused before any request."""
    cert_file, key_file = self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert_file, key_file)
    fake, sender = await make_apns(fake_options={"ssl_context": server_tls},
                                   ca_file=str(cert_file))
    with pytest.raises(TransientSendError, match="did not agree to HTTP/2"):
        await sender.send(push())
    assert fake.requests == []


# --- pure functions: the error mapping, header building, the HPACK encoder ---


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "words", "retry_after"),
    [
        (410, {}, b'{"reason":"Unregistered","timestamp":1700000000}', InvalidTokenError,
         "inactive since 2023-11-14", None),
        (400, {}, b'{"reason":"BadDeviceToken"}', InvalidTokenError, "other environment", None),
        (400, {}, b'{"reason":"IdleTimeout"}', TransientSendError, "400 IdleTimeout", None),
        (429, {"retry-after": "12"}, b'{"reason":"TooManyRequests"}', TransientSendError,
         "429 TooManyRequests", 12.0),
        (502, {}, b"<html>bad gateway</html>", TransientSendError, "502 (no reason given)", None),
        (403, {}, b'{"reason":"ExpiredProviderToken"}', PermanentSendError, "host's clock", None),
        (413, {}, b"", PermanentSendError, "payload over 4096 bytes", None),
        (400, {}, b'{"reason":"BadCollapseId"}', PermanentSendError, "APNs 400 BadCollapseId",
         None),
    ],
)
def test_classify_maps_status_headers_and_body(
    status: int, headers: dict[str, str], body: bytes, error: type[Exception], words: str,
    retry_after: float | None,
) -> None:
    """classify() reads the status, the reason in the body and Retry-After into our error."""
    result = classify(status, headers, body)
    assert type(result) is error
    assert words in result.reason
    assert result.retry_after == retry_after


def test_collapse_id_with_line_breaks_is_refused_and_spaces_trimmed() -> None:
    """A collapse id with CR/LF/NUL cannot be an HTTP/2 header value; outer spaces are trimmed."""
    with pytest.raises(PermanentSendError, match="collapse id contains CR, LF or NUL"):
        build_headers(push(collapse_id="a\r\nb"), topic=TOPIC, now=0)
    assert build_headers(push(collapse_id=" order-42 "), topic=TOPIC, now=0)[
        "apns-collapse-id"] == "order-42"


header_names = st.one_of(
    st.sampled_from([b":method", b":path", b":authority", b"authorization", b"apns-id",
                     b"www-authenticate", b"content-length"]),
    st.from_regex(rb"\A[a-z0-9-]{1,200}\Z"),
)
header_values = st.one_of(st.sampled_from([b"POST", b"GET", b"/", b"200", b""]),
                          st.binary(max_size=400))


@given(st.lists(st.tuples(header_names, header_values), max_size=12), st.integers(0, 8192))
def test_literal_hpack_encoder_round_trips_through_hpack(
    headers: list[tuple[bytes, bytes]], table_size: int
) -> None:
    """What the encoder writes, the hpack library's decoder reads back exactly, block after block."""
    encoder, decoder = LiteralHpackEncoder(), hpack.Decoder()
    assert decoder.decode(encoder.encode(headers), raw=True) == headers
    encoder.header_table_size = table_size  # a new SETTINGS_HEADER_TABLE_SIZE
    decoder.max_allowed_table_size = table_size
    assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert decoder.header_table_size == 0


def test_literal_hpack_encoder_never_indexes_credentials() -> None:
    """authorization goes as a never-indexed literal, so no proxy may put it in a table."""
    block = LiteralHpackEncoder().encode([(b":method", b"POST"), (b"authorization", b"bearer x"),
                                          (b"apns-topic", b"com.example.app")])
    decoded = hpack.Decoder().decode(block, raw=True)
    assert [type(h).__name__ for h in decoded] == [
        "HeaderTuple", "NeverIndexedHeaderTuple", "HeaderTuple"
    ]
    assert block[:2] == b"\x20\x83"  # table size 0, then :method POST from the static table
