"""The Twilio sender against a fake Twilio: the request, error mapping, limits, the breaker."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.base import OutboundSms
from adapters.breaker import CircuitBreaker
from adapters.errors import OptedOutError, PermanentSendError, TransientSendError
from adapters.http import HttpClient
from adapters.twilio import TwilioConfig, TwilioSender, status_callback_url
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

DEFAULT_FROM = "+15005550006"
CALLBACK = "https://gateway.example.com/v1/status/twilio"

MakeSender = Callable[..., TwilioSender]


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state as metrics show it (a function call, so each read is fresh)."""
    return breaker.state.value


def sms(to: str = "+15551230001", *, from_: str | None = None, body: str = "Hi") -> OutboundSms:
    return OutboundSms(message_id="m-1", to=to, from_=from_, body=body)


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    """A fake Twilio on a free local port, stopped after the test."""
    fake = FakeTwilio(slow_seconds=1.0)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_sender(fake_twilio: FakeTwilio) -> AsyncIterator[MakeSender]:
    """Build senders pointed at the fake (fast limits unless overridden); close them after."""
    made: list[TwilioSender] = []

    def make(**overrides: Any) -> TwilioSender:
        fields: dict[str, Any] = dict(
            account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=fake_twilio.url,
            default_from=DEFAULT_FROM, status_callback_url=CALLBACK, rate_per_number=1000.0,
            timeout=5.0,
        )
        sender = TwilioSender(TwilioConfig(**{**fields, **overrides}))
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


async def test_success_posts_the_form_with_basic_auth_and_returns_the_sid(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """A 201 yields the sid; the request has Basic auth, To, From, Body and StatusCallback."""
    result = await make_sender().send(sms(from_="+15005550009", body="Your code is 1234"))
    [request] = fake_twilio.received
    assert result.provider_message_id is not None
    assert re.fullmatch(r"SM[0-9a-f]{32}", result.provider_message_id)
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.authorization == f"Basic {credentials}"
    assert request.form == {
        "To": "+15551230001", "From": "+15005550009", "Body": "Your code is 1234",
        "StatusCallback": CALLBACK,
    }


async def test_default_from_and_no_callback_without_public_url(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """Without from_ the default number is used; without a callback URL none is sent."""
    await make_sender(status_callback_url=None).send(sms())
    [request] = fake_twilio.received
    assert request.form["From"] == DEFAULT_FROM
    assert "StatusCallback" not in request.form


async def test_reserved_and_non_ascii_characters_arrive_intact_and_in_order(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """The form survives &, =, +, %, spaces, newlines and emoji; fields go in Twilio's order."""
    body = "Code: 12+34 & more=yes 100% ü 😀\nReply STOP?#/"
    await make_sender(status_callback_url=CALLBACK + "?a=1&b=é").send(
        sms("+1 555 123 0001", from_="+15005550009", body=body)
    )
    [request] = fake_twilio.received
    assert list(request.form.items()) == [
        ("To", "+1 555 123 0001"), ("From", "+15005550009"), ("Body", body),
        ("StatusCallback", CALLBACK + "?a=1&b=é"),
    ]


async def test_senders_sharing_a_client_each_send_their_own_credentials(
    fake_twilio: FakeTwilio,
) -> None:
    """Two accounts on one HttpClient: each request carries its own account's Basic auth."""
    http = HttpClient(name="twilio", connect_timeout=5, read_timeout=5)

    def sender(auth_token: str) -> TwilioSender:
        config = TwilioConfig(account_sid=ACCOUNT_SID, auth_token=auth_token,
                              base_url=fake_twilio.url, default_from=DEFAULT_FROM,
                              rate_per_number=1000.0)
        return TwilioSender(config, http=http)

    good, wrong = sender(AUTH_TOKEN), sender("wrong")
    try:
        for _ in range(2):
            assert (await good.send(sms())).provider_message_id is not None
            with pytest.raises(TransientSendError, match="20003"):
                await wrong.send(sms())
    finally:
        await http.close()
    wrong_auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:wrong".encode()).decode()
    assert [r.authorization == wrong_auth for r in fake_twilio.received] == [
        False, True, False, True
    ]


def test_status_callback_url_is_under_the_public_url() -> None:
    """The callback URL is the public base URL plus /v1/status/twilio, and None without one."""
    assert status_callback_url("https://gw.example.com/") == CALLBACK.replace(
        "gateway.example.com", "gw.example.com"
    )
    assert status_callback_url(None) is None


async def test_no_from_number_at_all_is_permanent_and_sends_nothing(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """Without a from_ and without a default number the message fails before any request."""
    with pytest.raises(PermanentSendError, match="no From number"):
        await make_sender(default_from=None).send(sms())
    assert fake_twilio.received == []


async def test_code_21610_raises_opted_out(make_sender: MakeSender) -> None:
    """Twilio's 21610 (recipient replied STOP) raises OptedOutError, a PermanentSendError."""
    with pytest.raises(OptedOutError, match="21610") as caught:
        await make_sender().send(sms("+15550021610"))
    assert isinstance(caught.value, PermanentSendError)


@pytest.mark.parametrize("code", ["21211", "21614", "21602"])
async def test_other_4xx_codes_are_permanent_with_code_and_message(
    make_sender: MakeSender, code: str
) -> None:
    """21211, 21614 and any other 4xx are permanent, and the reason names Twilio's code and text."""
    with pytest.raises(PermanentSendError) as caught:
        await make_sender().send(sms(f"+1555{code.zfill(7)}"))
    assert not isinstance(caught.value, OptedOutError)
    assert caught.value.reason.startswith(f"twilio error {code}: ")
    assert len(caught.value.reason) > len(f"twilio error {code}: ")


async def test_429_is_transient_with_retry_after(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """A 429 with Retry-After: 1 gives TransientSendError(retry_after=1); a retry succeeds."""
    sender = make_sender()
    with pytest.raises(TransientSendError) as caught:
        await sender.send(sms("+15550000429"))
    assert caught.value.retry_after == 1
    assert "20429" in caught.value.reason
    result = await sender.send(sms("+15550000429"))
    assert result.provider_message_id is not None
    assert len(fake_twilio.received) == 2


async def test_code_20429_without_retry_after_is_transient(make_sender: MakeSender) -> None:
    """Code 20429 without a Retry-After header is transient with no hint."""
    with pytest.raises(TransientSendError) as caught:
        await make_sender().send(sms("+15550020429"))
    assert caught.value.retry_after is None


async def test_5xx_is_transient(make_sender: MakeSender) -> None:
    """A 503 with a non-JSON body is transient and the reason shows the status."""
    with pytest.raises(TransientSendError, match="twilio HTTP 503"):
        await make_sender().send(sms("+15550000503"))


async def test_refused_credentials_are_transient(make_sender: MakeSender) -> None:
    """A 401 (wrong auth token) is a configuration problem: transient, not the message's fault."""
    with pytest.raises(TransientSendError, match="20003"):
        await make_sender(auth_token="wrong").send(sms())


async def test_timeout_is_transient(make_sender: MakeSender) -> None:
    """A provider slower than the read timeout gives TransientSendError, not aiohttp's error."""
    with pytest.raises(TransientSendError, match="timed out"):
        await make_sender(timeout=0.2).send(sms("+15550000999"))


async def test_refused_connection_is_transient(make_sender: MakeSender) -> None:
    """Nothing listening at base_url gives TransientSendError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientSendError, match="connection problem"):
        await make_sender(base_url=f"http://127.0.0.1:{port}").send(sms())


async def test_sends_from_one_number_are_spaced_by_its_rate_and_others_are_not_delayed(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """At 5/s, sends from one number reach Twilio ≥ 0.2 s apart; another number's does not wait."""
    sender = make_sender(rate_per_number=5.0, burst=1)
    slow_from, other_from = "+15005550001", "+15005550002"
    started = asyncio.get_running_loop().time()
    await asyncio.gather(
        *(sender.send(sms(f"+1555123000{i}", from_=slow_from)) for i in range(5)),
        sender.send(sms("+15551239999", from_=other_from)),
    )
    times = sorted(r.at for r in fake_twilio.received if r.form["From"] == slow_from)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    assert min(gaps) >= 0.17, gaps
    [other] = [r.at for r in fake_twilio.received if r.form["From"] == other_from]
    assert other - started < 0.15
    assert other < times[1]


async def test_a_number_rate_override_applies_to_that_number(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """A short code configured at 100/s sends five messages well inside the 10DLC spacing."""
    sender = make_sender(rate_per_number=1.0, number_rates={"12345": 100.0}, burst=1)
    await asyncio.gather(*(sender.send(sms(f"+1555123000{i}", from_="12345")) for i in range(5)))
    times = sorted(r.at for r in fake_twilio.received)
    assert len(times) == 5
    assert times[-1] - times[0] < 0.5


async def test_concurrency_is_capped(fake_twilio: FakeTwilio, make_sender: MakeSender) -> None:
    """With max_concurrency=2 the fake never answers more than two requests at once."""
    fake_twilio.slow_seconds = 0.2
    sender = make_sender(max_concurrency=2)
    await asyncio.gather(*(sender.send(sms("+15550000999")) for _ in range(5)))
    assert len(fake_twilio.received) == 5
    assert fake_twilio.max_in_flight == 2


async def test_breaker_opens_after_n_transient_failures_and_closes_after_reset(
    fake_twilio: FakeTwilio, make_sender: MakeSender
) -> None:
    """Two 503s open the breaker: the next send never reaches Twilio; after 0.3 s one does."""
    sender = make_sender(breaker_threshold=2, breaker_reset_seconds=0.3)
    for _ in range(2):
        with pytest.raises(TransientSendError, match="503"):
            await sender.send(sms("+15550000503"))
    assert state(sender.breaker) == "open"

    with pytest.raises(TransientSendError, match="paused by circuit breaker") as caught:
        await sender.send(sms())
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.3
    assert len(fake_twilio.received) == 2

    await asyncio.sleep(0.35)
    assert state(sender.breaker) == "half_open"
    result = await sender.send(sms())
    assert result.provider_message_id is not None
    assert state(sender.breaker) == "closed"
    assert len(fake_twilio.received) == 3


async def test_permanent_refusals_do_not_open_the_breaker(make_sender: MakeSender) -> None:
    """Invalid numbers are the message's fault, not an outage: the breaker stays closed."""
    sender = make_sender(breaker_threshold=2)
    for _ in range(3):
        with pytest.raises(PermanentSendError):
            await sender.send(sms("+15550021211"))
    assert state(sender.breaker) == "closed"
