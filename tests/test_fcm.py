"""The FCM HTTP v1 adapter against a local fake of FCM and Google's token endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapters.base import OutboundPush
from adapters.errors import InvalidTokenError, PermanentSendError, TransientSendError
from adapters.fcm import FcmConfig, FcmSender, load_fcm_config
from tests.fake_fcm import FakeFcm

PROJECT = "demo-project"
EMAIL = "gateway@demo-project.iam.gserviceaccount.com"
DEVICE = "fcm-device-token-1"


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="session")
def account_key() -> rsa.RSAPrivateKey:
    """The service account's RSA key pair."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    """A clock shared by the sender and the fake."""
    return Clock()


Factory = Callable[..., Awaitable[tuple[FakeFcm, FcmSender]]]


@pytest.fixture
async def make_fcm(account_key: rsa.RSAPrivateKey, clock: Clock) -> AsyncIterator[Factory]:
    """Start a fake FCM and a sender pointed at it by URL; close both at the end."""
    made: list[tuple[FakeFcm, FcmSender]] = []

    async def make(*, fake_options: dict[str, Any] | None = None,
                   credentials: dict[str, str] | None = None, **config: Any) -> tuple[
        FakeFcm, FcmSender
    ]:
        fake = FakeFcm(public_key=account_key.public_key(), client_email=EMAIL,
                       project_id=PROJECT, clock=clock, **(fake_options or {}))
        await fake.start()
        account = {"project_id": PROJECT, "client_email": EMAIL,
                   "private_key": pem(account_key), **(credentials or {})}
        options: dict[str, Any] = {"base_url": fake.url, "token_url": fake.token_url,
                                   "credentials": account, "timeout": 5.0}
        sender = FcmSender(FcmConfig(**{**options, **config}), clock=clock)
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


async def test_alert_push_has_notification_and_string_data(make_fcm: Factory) -> None:
    """An alert carries the notification, high priority and data values as strings."""
    fake, sender = await make_fcm()
    data = {"order": 42, "paid": True, "items": {"sku": "A1"}, "note": "gift", "coupon": None}
    result = await sender.send(push(data=data))

    [message] = fake.messages
    assert message["token"] == DEVICE
    assert message["notification"] == {"title": "Hello", "body": "Your order shipped"}
    assert message["data"] == {"order": "42", "paid": "true", "items": '{"sku":"A1"}',
                               "note": "gift", "coupon": "null"}
    assert message["android"] == {"priority": "high"}
    assert message["apns"] == {"headers": {"apns-push-type": "alert", "apns-priority": "10"}}
    assert result.provider_message_id == f"projects/{PROJECT}/messages/1"


async def test_silent_push_is_data_only(make_fcm: Factory) -> None:
    """A silent push has no notification, normal Android priority and an APNs background block."""
    fake, sender = await make_fcm()
    await sender.send(push(silent=True, title=None, body=None, data={"sync": "inbox"}))

    [message] = fake.messages
    assert "notification" not in message
    assert message["data"] == {"sync": "inbox"}
    assert message["android"] == {"priority": "normal"}
    assert message["apns"] == {"headers": {"apns-push-type": "background", "apns-priority": "5"},
                               "payload": {"aps": {"content-available": 1}}}


async def test_expiry_and_collapse_id_reach_android_and_apns(make_fcm: Factory,
                                                             clock: Clock) -> None:
    """expires_at becomes an Android ttl and apns-expiration; collapse_id a collapse key."""
    fake, sender = await make_fcm()
    expires = dt.datetime.fromtimestamp(clock.now + 600, tz=dt.UTC)
    await sender.send(push(expires_at=expires, collapse_id="order-42"))

    [message] = fake.messages
    assert message["android"] == {"priority": "high", "ttl": "600s", "collapse_key": "order-42"}
    assert message["apns"]["headers"]["apns-expiration"] == str(int(clock.now + 600))
    assert message["apns"]["headers"]["apns-collapse-id"] == "order-42"


async def test_one_token_fetch_serves_fifty_concurrent_sends(make_fcm: Factory) -> None:
    """50 sends started together wait for a single access token and all use it."""
    fake, sender = await make_fcm(fake_options={"token_latency": 0.05})
    await asyncio.gather(*(sender.send(push(to=f"device-{i}")) for i in range(50)))

    assert fake.token_requests == 1
    assert len(fake.messages) == 50
    assert {r.access_token for r in fake.requests} == {"ya29.fake-1"}


async def test_token_is_reused_then_refreshed_a_minute_before_expiry(
    make_fcm: Factory, clock: Clock
) -> None:
    """The access token is kept until 60 s before expires_in, then fetched again in time."""
    fake, sender = await make_fcm(fake_options={"expires_in": 3600})
    await sender.send(push())
    clock.now += 3600 - 61
    await sender.send(push())
    assert fake.token_requests == 1
    clock.now += 2
    await sender.send(push())

    assert fake.token_requests == 2
    assert [r.status for r in fake.requests] == [200, 200, 200]
    assert [r.access_token for r in fake.requests] == ["ya29.fake-1", "ya29.fake-1",
                                                       "ya29.fake-2"]


async def test_401_refreshes_the_token_once_and_retries(make_fcm: Factory) -> None:
    """A send answered 401 fetches a new access token and is sent again with it."""
    fake, sender = await make_fcm()
    result = await sender.send(push(to="__unauthenticated_once__"))

    assert result.provider_message_id == f"projects/{PROJECT}/messages/1"
    assert fake.token_requests == 2
    assert [(r.status, r.access_token) for r in fake.requests] == [
        (401, "ya29.fake-1"), (200, "ya29.fake-2")]


@pytest.mark.parametrize(
    ("device", "error", "words", "retry_after"),
    [
        ("__unregistered__", InvalidTokenError, "404 UNREGISTERED", None),
        ("__invalid_token__", InvalidTokenError, "not a valid FCM registration token", None),
        ("__invalid_argument__", PermanentSendError, "400 INVALID_ARGUMENT", None),
        ("__sender_id_mismatch__", PermanentSendError, "another Firebase project", None),
        ("__third_party_auth__", PermanentSendError, "Firebase console", None),
        ("__quota_exceeded__", TransientSendError, "429 QUOTA_EXCEEDED", 60.0),
        ("__unavailable__", TransientSendError, "503 UNAVAILABLE", 10.0),
        ("__internal__", TransientSendError, "500 INTERNAL", None),
    ],
)
async def test_fcm_refusals_map_onto_our_errors(
    make_fcm: Factory, device: str, error: type[Exception], words: str, retry_after: float | None
) -> None:
    """Each FCM errorCode raises the error that tells the pipeline what to do."""
    fake, sender = await make_fcm()
    with pytest.raises(error) as raised:
        await sender.send(push(to=device))
    assert type(raised.value) is error
    assert words in raised.value.reason  # type: ignore[attr-defined]
    assert raised.value.retry_after == retry_after  # type: ignore[attr-defined]
    assert fake.token_requests == 1  # only a plain 401 is worth a new token


async def test_wrong_project_is_a_configuration_error(make_fcm: Factory) -> None:
    """A project the service account may not send for is refused for good, naming the setting."""
    _, sender = await make_fcm(credentials={"project_id": "someone-else"})
    with pytest.raises(PermanentSendError, match="GATEWAY_FCM_CREDENTIALS_FILE"):
        await sender.send(push())


async def test_token_endpoint_refusing_the_key_fails_for_good(make_fcm: Factory) -> None:
    """A private key Google does not know is refused at the token endpoint, nothing is sent."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake, sender = await make_fcm(credentials={"private_key": pem(other)})
    with pytest.raises(PermanentSendError, match="invalid_grant: Invalid JWT Signature"):
        await sender.send(push())
    assert fake.token_requests == 1
    assert fake.requests == []


async def test_unreachable_token_endpoint_is_transient(make_fcm: Factory) -> None:
    """No server at the token URL is a transient failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, sender = await make_fcm(token_url=f"http://127.0.0.1:{port}/token")
    with pytest.raises(TransientSendError, match="connection problem"):
        await sender.send(push())


async def test_unanswered_send_times_out_as_transient(make_fcm: Factory) -> None:
    """A send FCM never answers becomes a transient failure after the timeout."""
    _, sender = await make_fcm(timeout=0.3)
    with pytest.raises(TransientSendError, match="timed out"):
        await sender.send(push(to="__hang__"))


async def test_payload_over_4096_bytes_fails_before_sending(make_fcm: Factory) -> None:
    """Notification plus data over 4 KiB is refused for good before any request."""
    fake, sender = await make_fcm()
    with pytest.raises(PermanentSendError, match="over the 4096-byte limit"):
        await sender.send(push(data={"blob": "x" * 4096}))
    assert fake.token_requests == 0
    assert fake.requests == []


def test_load_fcm_config_reads_a_service_account_file(account_key: rsa.RSAPrivateKey) -> None:
    """load_fcm_config keeps project_id, client_email and private_key and names what is wrong."""
    account = {"type": "service_account", "project_id": PROJECT, "client_email": EMAIL,
               "private_key": pem(account_key), "token_uri": "https://oauth2.googleapis.com/token"}
    config = load_fcm_config(orjson.dumps(account), base_url="http://127.0.0.1:1")
    assert dict(config.credentials) == {k: account[k] for k in
                                        ("project_id", "client_email", "private_key")}
    assert config.base_url == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="not JSON"):
        load_fcm_config("{")
    with pytest.raises(ValueError, match="lack client_email"):
        load_fcm_config(orjson.dumps({**account, "client_email": ""}))
    with pytest.raises(ValueError, match="not an RSA"):
        load_fcm_config(orjson.dumps({**account,
                                      "private_key": pem(ec.generate_private_key(ec.SECP256R1()))}))
