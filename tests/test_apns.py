"""The APNs adapter against a local HTTP/2 fake that verifies its provider token."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from adapters.apns import ApnsConfig, ApnsSender, load_apns_config
from adapters.base import OutboundPush
from adapters.errors import InvalidTokenError, PermanentSendError, TransientSendError
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
