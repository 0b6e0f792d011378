"""Two-way SMS: the Twilio, Telnyx and Vonage inbound webhooks against real services.

Signatures are made the providers' way: Twilio's with the official ``twilio`` package's
``RequestValidator``, Telnyx's with a freshly generated Ed25519 key, Vonage's with its
documented algorithm written out here. Replies sent through the SMS adapter arrive at a fake
Twilio.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from adapters.telnyx_signature import load_public_key, refusal
from adapters.twilio_signature import compute_signature
from adapters.vonage_signature import compute_signature as vonage_signature
from adapters.vonage_signature import fresh
from adapters.vonage_signature import validate_signature as valid_vonage_signature
from gateway.api_inbound import MAX_WEBHOOK_BYTES, twiml
from gateway.app import Gateway
from gateway.numbers import DEFAULT_HELP_TEXT, DEFAULT_START_TEXT, DEFAULT_STOP_TEXT
from tests.conftest import API_TOKEN, Amqp
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

PUBLIC_URL = "https://gateway.example.com"
NUMBER = "+14155550199"  # ours, and GATEWAY_SMS_FROM
OTHER_NUMBER = "+14155550123"  # ours too
SENDER = "+447911123456"
VONAGE_SECRET = "vonage-signature-secret"
NO_REPLY = twiml(None)
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any
) -> Gateway:
    """An HTTP-only gateway with every provider's secret, replying through the fake Twilio."""
    settings = settings_for(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=twilio.url,
        sms_from=NUMBER,
        public_url=PUBLIC_URL,
        sms_rate_per_second=1000,
        telnyx_public_key=TELNYX_PUBLIC,
        vonage_signature_secret=VONAGE_SECRET,
    )
    started: Gateway = await start_gateway(settings, consume=False, http=True)
    return started


def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def register(gateway: Gateway, number: str = NUMBER, **config: Any) -> None:
    """Register one of our numbers over the API."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.put(f"{base_url(gateway)}/v1/numbers/{number}", json=config) as response:
            assert response.status in (200, 201), await response.text()


# -- Twilio ------------------------------------------------------------------------------------


def twilio_params(body: str, *, sender: str = SENDER, to: str = NUMBER,
                  sid: str | None = None) -> dict[str, str]:
    """An inbound message's form, as Twilio posts it."""
    return {
        "MessageSid": sid or "SM" + secrets.token_hex(16),
        "AccountSid": ACCOUNT_SID,
        "From": sender,
        "To": to,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
        "FromCountry": "GB",
    }


async def post_twilio(
    gateway: Gateway,
    params: dict[str, str] | MultiDict[str],
    *,
    signature: str | None = None,
    path: str = "/v1/inbound/sms/twilio",
) -> tuple[int, str, str]:
    """POST a webhook signed by twilio-python's validator; (status, content type, body)."""
    if signature is None:
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + path, params)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            base_url(gateway) + path, data=params, headers={"X-Twilio-Signature": signature}
        ) as response:
            return response.status, response.content_type, await response.text()


async def text_twilio(gateway: Gateway, body: str, **kwargs: Any) -> str:
    """Send one signed inbound message; the TwiML answer (which must be a 200)."""
    status, content_type, answer = await post_twilio(gateway, twilio_params(body, **kwargs))
    assert (status, content_type) == (200, "text/xml"), answer
    return answer


def keyed(events: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [e for e in events if e["_key"] == key]


def inbound(events: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [e for e in keyed(events, "inbound.sms") if e["provider_message_id"] == sid]


async def test_stop_opts_out_from_every_number_and_confirms_once(
    gateway: Gateway, amqp: Amqp
) -> None:
    """STOP on an 'all' number records a keyword opt-out for every number, confirms it once, and
    START removes it with the start text."""
    await register(gateway)
    assert await text_twilio(gateway, "Stop.", sid="SM-stop-1") == twiml(DEFAULT_STOP_TEXT)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        async with http.get(f"{base_url(gateway)}/v1/opt-outs/sms/{SENDER}") as response:
            assert response.status == 200
            assert (await response.json())["source"] == "keyword"
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-stop-1"))
    [opted_out] = keyed(events, "endpoint.opted_out")
    assert {k: v for k, v in opted_out.items() if k not in ("timestamp", "_key")} == {
        "event": "endpoint.opted_out", "channel": "sms", "address": SENDER, "scope": "all",
        "source": "keyword", "number": NUMBER,
    }
    [event] = inbound(events, "SM-stop-1")
    assert (event["action"], event["keyword"], event["reply"]) == (
        "opt_out", "STOP", DEFAULT_STOP_TEXT,
    )

    assert await text_twilio(gateway, "STOP!", sid="SM-stop-2") == NO_REPLY  # no second text
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-stop-2"))
    assert "reply" not in inbound(events, "SM-stop-2")[0]
    assert len(keyed(events, "endpoint.opted_out")) == 1

    assert await text_twilio(gateway, "start", sid="SM-start") == twiml(DEFAULT_START_TEXT)
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-start"))
    [opted_in] = keyed(events, "endpoint.opted_in")
    assert (opted_in["scope"], opted_in["source"]) == ("all", "keyword")
    assert opted_in["address"] == SENDER
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        async with http.get(f"{base_url(gateway)}/v1/opt-outs/sms/{SENDER}") as response:
            assert response.status == 404


async def test_stop_on_a_number_scoped_number_blocks_that_number_only(
    gateway: Gateway, amqp: Amqp, pg_pool: asyncpg.Pool
) -> None:
    """STOP on a 'number' number records an opt-out scoped to it (not the global one); START
    removes it."""
    await register(gateway, opt_out_scope="number")
    assert await text_twilio(gateway, "stop") == twiml(DEFAULT_STOP_TEXT)
    rows = await pg_pool.fetch("SELECT address, scope, source FROM opt_outs WHERE channel = 'sms'")
    assert [dict(r) for r in rows] == [{"address": SENDER, "scope": NUMBER, "source": "keyword"}]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
        async with http.get(f"{base_url(gateway)}/v1/opt-outs/sms/{SENDER}") as response:
            assert response.status == 404  # the API shows opt-outs from every number
    events = await amqp.wait_events(lambda ev: keyed(ev, "endpoint.opted_out"))
    assert keyed(events, "endpoint.opted_out")[0]["scope"] == "number"

    assert await text_twilio(gateway, "UNSTOP") == twiml(DEFAULT_START_TEXT)
    assert await pg_pool.fetchval("SELECT count(*) FROM opt_outs") == 0


async def test_start_on_an_all_number_also_clears_its_number_scoped_opt_out(
    gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    """START on an 'all' number removes both the every-number entry and this number's own."""
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, scope, source) VALUES"
        " ('sms', $1, '', 'keyword'), ('sms', $1, $2, 'keyword'), ('sms', $1, $3, 'keyword')",
        SENDER, NUMBER, OTHER_NUMBER,
    )
    await register(gateway)
    assert await text_twilio(gateway, "yes") == twiml(DEFAULT_START_TEXT)
    scopes = await pg_pool.fetch("SELECT scope FROM opt_outs")
    assert [r["scope"] for r in scopes] == [OTHER_NUMBER]


async def test_a_retried_webhook_is_processed_once(
    gateway: Gateway, amqp: Amqp, pg_pool: asyncpg.Pool
) -> None:
    """The same MessageSid twice gets the same TwiML, makes one inbound row and one event."""
    await register(gateway)
    params = twilio_params("STOP", sid="SM-retried")
    first = await post_twilio(gateway, params)
    second = await post_twilio(gateway, params)
    assert first == second == (200, "text/xml", twiml(DEFAULT_STOP_TEXT))
    assert await pg_pool.fetchval("SELECT count(*) FROM inbound_messages") == 1
    await text_twilio(gateway, "hello", sid="SM-after")  # its event comes after any duplicate
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-after"))
    assert len(inbound(events, "SM-retried")) == 1
    assert len(keyed(events, "endpoint.opted_out")) == 1


async def test_concurrent_webhooks_keep_the_limits(
    gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    """Concurrent deliveries of one message record it once; concurrent HELPs get three replies."""
    await register(gateway)
    same = twilio_params("hello", sid="SM-twice")
    helps = [twilio_params("help") for _ in range(6)]
    answers = await asyncio.gather(*(post_twilio(gateway, p) for p in [same, same, *helps]))
    assert {status for status, _, _ in answers} == {200}
    assert [text for _, _, text in answers[2:]].count(twiml(DEFAULT_HELP_TEXT)) == 3
    assert await pg_pool.fetchval(
        "SELECT count(*) FROM inbound_messages WHERE provider_message_id = 'SM-twice'"
    ) == 1


@pytest.mark.parametrize("sender", ["12345", "+1234567", "ACME", "Acme Bank"])
async def test_short_codes_and_alphanumeric_senders_get_no_reply(
    sender: str, gateway: Gateway, amqp: Amqp
) -> None:
    """HELP from a short code or an alphanumeric sender is recorded and forwarded, not answered."""
    await register(gateway)
    assert await text_twilio(gateway, "HELP", sender=sender, sid="SM-bot") == NO_REPLY
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-bot"))
    [event] = inbound(events, "SM-bot")
    assert (event["from"], event["action"]) == (sender, "help")
    assert "reply" not in event


async def test_at_most_three_auto_replies_per_sender_per_number_per_hour(
    gateway: Gateway,
) -> None:
    """The fourth HELP within an hour gets no reply; another number still answers."""
    await register(gateway)
    await register(gateway, OTHER_NUMBER)
    answers = [await text_twilio(gateway, "help") for _ in range(4)]
    assert answers == [twiml(DEFAULT_HELP_TEXT)] * 3 + [NO_REPLY]
    assert await text_twilio(gateway, "help", to=OTHER_NUMBER) == twiml(DEFAULT_HELP_TEXT)


async def test_help_custom_and_ordinary_messages(gateway: Gateway, amqp: Amqp) -> None:
    """HELP answers the help text, a custom keyword its reply (escaped), anything else nothing."""
    await register(gateway, help_text="Acme help", keywords={"HOURS": "Open 9-5 <Mon & Tue>"})
    assert await text_twilio(gateway, "info") == twiml("Acme help")
    answer = await text_twilio(gateway, "hours?", sid="SM-hours")
    assert answer == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Message>Open 9-5 &lt;Mon &amp; Tue&gt;</Message></Response>"
    )
    assert await text_twilio(gateway, "STOP please", sid="SM-plain") == NO_REPLY
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-plain"))
    [hours] = inbound(events, "SM-hours")
    assert (hours["action"], hours["keyword"], hours["reply"]) == (
        "custom", "HOURS", "Open 9-5 <Mon & Tue>",
    )
    [plain] = inbound(events, "SM-plain")
    assert (plain["action"], plain["body"], plain["to"]) == ("none", "STOP please", NUMBER)
    assert "keyword" not in plain and "reply" not in plain
    assert keyed(events, "endpoint.opted_out") == []


async def test_forward_off_publishes_no_inbound_event_but_opt_outs_still(
    gateway: Gateway, amqp: Amqp
) -> None:
    """With forward off, no inbound.sms is published; the opt-out event still is."""
    await register(gateway, forward=False)
    await register(gateway, OTHER_NUMBER)
    assert await text_twilio(gateway, "STOP", sid="SM-quiet") == twiml(DEFAULT_STOP_TEXT)
    await text_twilio(gateway, "hello", to=OTHER_NUMBER, sid="SM-loud")
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-loud"))
    assert inbound(events, "SM-quiet") == []
    assert [e["number"] for e in keyed(events, "endpoint.opted_out")] == [NUMBER]


async def test_inbound_event_names_our_last_message_from_that_number(
    gateway: Gateway, amqp: Amqp, pg_pool: asyncpg.Pool
) -> None:
    """last_message_id is our newest SMS to the sender from the number written to, else null."""
    await register(gateway)
    await register(gateway, OTHER_NUMBER)
    now = datetime.now(timezone.utc)
    rows = [
        ("m-default-from", "sms", SENDER, {}, now - timedelta(hours=3)),  # GATEWAY_SMS_FROM
        ("m-from-number", "sms", SENDER, {"from": NUMBER}, now - timedelta(hours=2)),
        ("m-other-number", "sms", SENDER, {"from": OTHER_NUMBER}, now - timedelta(hours=1)),
        ("m-other-person", "sms", "+447911000000", {"from": NUMBER}, now),
    ]
    await pg_pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, recipient, created_at)"
        " VALUES ($1, $2, 'transactional', 'sent', $4::jsonb, $3, $5)",
        [(i, c, r, orjson.dumps(j).decode(), t) for i, c, r, j, t in rows],
    )
    await text_twilio(gateway, "thanks", sid="SM-reply-1")
    await text_twilio(gateway, "thanks", to=OTHER_NUMBER, sid="SM-reply-2")
    await text_twilio(gateway, "hi", sender="+447911999999", sid="SM-stranger")
    events = await amqp.wait_events(lambda ev: inbound(ev, "SM-stranger"))
    assert inbound(events, "SM-reply-1")[0]["last_message_id"] == "m-from-number"
    assert inbound(events, "SM-reply-2")[0]["last_message_id"] == "m-other-number"
    assert inbound(events, "SM-stranger")[0]["last_message_id"] is None


async def test_twilio_signature_failures_answer_403(gateway: Gateway) -> None:
    """A forged signature, a parameter added after signing or a signature for another URL is 403."""
    await register(gateway)
    params = twilio_params("HELP")
    status, _, _ = await post_twilio(gateway, params, signature="forged=")
    assert status == 403
    signed = RequestValidator(AUTH_TOKEN).compute_signature(
        PUBLIC_URL + "/v1/inbound/sms/twilio", params
    )
    status, _, _ = await post_twilio(gateway, {**params, "Extra": "1"}, signature=signed)
    assert status == 403
    other_url = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/elsewhere", params)
    status, _, _ = await post_twilio(gateway, params, signature=other_url)
    assert status == 403


async def test_every_parameter_and_the_query_string_are_signed(gateway: Gateway) -> None:
    """Parameters Twilio adds, repeated names and the URL's query string are all covered."""
    await register(gateway)
    params: MultiDict[str] = MultiDict(twilio_params("help"))
    params.add("MediaUrl0", "https://example.com/a.jpg")
    params.add("NewParameterTwilioAdded", "b")
    params.add("NewParameterTwilioAdded", "a")
    params.add("NewParameterTwilioAdded", "a")
    status, _, answer = await post_twilio(gateway, params, path="/v1/inbound/sms/twilio?tenant=7")
    assert (status, answer) == (200, twiml(DEFAULT_HELP_TEXT))


async def test_unknown_number_malformed_and_oversized_webhooks(gateway: Gateway) -> None:
    """To a number not ours: 404; no From: 400; a body over the limit: 413."""
    await register(gateway)
    status, _, _ = await post_twilio(gateway, twilio_params("hi", to=OTHER_NUMBER))
    assert status == 404
    status, _, _ = await post_twilio(gateway, twilio_params("hi", to="12345"))
    assert status == 404
    params = twilio_params("hi")
    del params["From"]
    status, _, _ = await post_twilio(gateway, params)
    assert status == 400
    status, _, _ = await post_twilio(gateway, twilio_params("x" * MAX_WEBHOOK_BYTES))
    assert status == 413


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.text(max_size=8), min_size=1, max_size=3),
        max_size=5,
    )
)
def test_our_twilio_signature_is_the_official_one(params: dict[str, list[str]]) -> None:
    """For any parameters, repeated and non-ASCII ones included, twilio-python signs as we check."""
    url = "https://gateway.example.com/v1/inbound/sms/twilio?x=1"
    multi: MultiDict[str] = MultiDict((k, v) for k, values in params.items() for v in values)
    distinct = {k: sorted(set(values)) for k, values in params.items()}
    assert compute_signature(AUTH_TOKEN, url, distinct) == RequestValidator(
        AUTH_TOKEN
    ).compute_signature(url, multi)


def test_twiml_is_escaped_xml() -> None:
    """The reply is XML-escaped inside <Message>; no reply is an empty <Response/>."""
    assert twiml("a < b & c > d") == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Message>a &lt; b &amp; c &gt; d</Message></Response>"
    )
    assert twiml(None) == '<?xml version="1.0" encoding="UTF-8"?><Response/>'


# -- Telnyx ------------------------------------------------------------------------------------


def telnyx_body(text: str, *, message_id: str = "", event_type: str = "message.received",
                sender: str = SENDER, to: str = NUMBER) -> bytes:
    """A Telnyx message webhook, as JSON bytes."""
    return orjson.dumps({
        "data": {
            "event_type": event_type,
            "id": "evt-" + secrets.token_hex(8),
            "occurred_at": "2024-01-01T12:00:00.000+00:00",
            "payload": {
                "id": message_id or "msg-" + secrets.token_hex(8),
                "direction": "inbound",
                "from": {"phone_number": sender, "carrier": "T-Mobile"},
                "to": [{"phone_number": to, "status": "webhook_delivered"}],
                "text": text,
                "type": "SMS",
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": f"{PUBLIC_URL}/v1/inbound/sms/telnyx"},
    })


async def post_telnyx(
    gateway: Gateway, body: bytes, *, timestamp: int | None = None,
    key: Ed25519PrivateKey = TELNYX_KEY,
) -> int:
    """POST a Telnyx webhook signed with ``key`` at ``timestamp`` (default: now); the status."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp,
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url(gateway)}/v1/inbound/sms/telnyx", data=body, headers=headers
        ) as response:
            return response.status


async def test_telnyx_help_is_answered_through_the_sms_adapter_once(
    gateway: Gateway, twilio: FakeTwilio, amqp: Amqp
) -> None:
    """A signed Telnyx HELP gets the help text from our number through the SMS adapter, once."""
    await register(gateway)
    body = telnyx_body("HELP", message_id="telnyx-1")
    assert await post_telnyx(gateway, body) == 200
    assert await post_telnyx(gateway, body) == 200  # Telnyx retried
    [reply] = twilio.sent_to(SENDER)
    assert (reply.form["From"], reply.form["Body"]) == (NUMBER, DEFAULT_HELP_TEXT)
    events = await amqp.wait_events(lambda ev: keyed(ev, "inbound.sms"))
    assert (events[0]["provider"], events[0]["provider_message_id"]) == ("telnyx", "telnyx-1")


async def test_telnyx_stale_or_forged_webhooks_answer_403(
    gateway: Gateway, twilio: FakeTwilio, pg_pool: asyncpg.Pool
) -> None:
    """A timestamp more than 300 s away, or another key's signature, is refused with 403."""
    await register(gateway)
    body = telnyx_body("STOP")
    assert await post_telnyx(gateway, body, timestamp=int(time.time()) - 301) == 403
    assert await post_telnyx(gateway, body, timestamp=int(time.time()) + 301) == 403
    assert await post_telnyx(gateway, body, key=Ed25519PrivateKey.generate()) == 403
    assert twilio.received == []
    assert await pg_pool.fetchval("SELECT count(*) FROM opt_outs") == 0


async def test_telnyx_other_events_are_ignored_and_bad_bodies_refused(
    gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    """A signed event that is not message.received answers 200 and does nothing; no data is 400."""
    await register(gateway)
    assert await post_telnyx(gateway, telnyx_body("STOP", event_type="message.sent")) == 200
    assert await pg_pool.fetchval("SELECT count(*) FROM inbound_messages") == 0
    assert await post_telnyx(gateway, b'{"meta": {}}') == 400
    assert await post_telnyx(gateway, b"not json") == 400
    assert await post_telnyx(gateway, telnyx_body("hi", to=OTHER_NUMBER)) == 404


def test_telnyx_refusal_checks_signature_and_clock() -> None:
    """refusal is None for a fresh good signature and names the problem otherwise."""
    key = load_public_key(TELNYX_PUBLIC)
    body = b'{"data": {}}'
    good = base64.b64encode(TELNYX_KEY.sign(b"1700000000|" + body)).decode()
    assert refusal(key, timestamp="1700000000", body=body, signature=good, now=1700000300) is None
    assert "clock" in (refusal(key, timestamp="1700000000", body=body, signature=good,
                               now=1700000301) or "")
    assert "match" in (refusal(key, timestamp="1700000000", body=body + b" ", signature=good,
                               now=1700000000) or "")
    assert refusal(key, timestamp="", body=body, signature=good, now=1700000000) is not None
    assert refusal(key, timestamp="1700000000", body=body, signature="%%%",
                   now=1700000000) is not None


# -- Vonage ------------------------------------------------------------------------------------


def documented_vonage_sig(params: dict[str, str], secret: str, method: str) -> str:
    """Vonage's documented signature, written out independently of the gateway's code."""
    text = "".join(
        "&" + k + "=" + params[k].replace("&", "_").replace("=", "_") for k in sorted(params)
    )
    if method == "md5hash":
        return hashlib.md5((text + secret).encode()).hexdigest()
    return hmac.new(secret.encode(), text.encode(), method).hexdigest().upper()


def vonage_params(text: str, *, message_id: str = "", timestamp: int | None = None,
                  secret: str = VONAGE_SECRET) -> dict[str, str]:
    """A signed Vonage inbound SMS (numbers without +, as Vonage writes them)."""
    params = {
        "msisdn": SENDER.lstrip("+"),
        "to": NUMBER.lstrip("+"),
        "messageId": message_id or secrets.token_hex(8).upper(),
        "text": text,
        "type": "text",
        "keyword": text.split(" ")[0].upper(),
        "message-timestamp": "2024-01-01 12:00:00",
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "nonce": secrets.token_hex(8),
    }
    return {**params, "sig": documented_vonage_sig(params, secret, "md5hash")}


async def post_vonage(gateway: Gateway, params: dict[str, str], *, as_json: bool = False) -> int:
    async with aiohttp.ClientSession() as http:
        url = f"{base_url(gateway)}/v1/inbound/sms/vonage"
        payload = {"json": params} if as_json else {"data": params}
        async with http.post(url, **payload) as response:
            return response.status


@pytest.mark.parametrize("as_json", [False, True])
async def test_vonage_help_is_answered_through_the_sms_adapter(
    as_json: bool, gateway: Gateway, twilio: FakeTwilio, amqp: Amqp
) -> None:
    """A signed Vonage HELP (form or JSON) gets the help text through the SMS adapter."""
    await register(gateway, help_text="Help & more = good")
    params = vonage_params("help", message_id="V1")
    assert await post_vonage(gateway, params, as_json=as_json) == 200
    [reply] = twilio.sent_to(SENDER)
    assert (reply.form["From"], reply.form["Body"]) == (NUMBER, "Help & more = good")
    events = await amqp.wait_events(lambda ev: keyed(ev, "inbound.sms"))
    assert (events[0]["from"], events[0]["to"], events[0]["provider"]) == (SENDER, NUMBER, "vonage")


async def test_vonage_bad_signature_or_stale_timestamp_answers_403(
    gateway: Gateway, twilio: FakeTwilio
) -> None:
    """A sig made with another secret, a changed text or an old timestamp is refused with 403."""
    await register(gateway)
    assert await post_vonage(gateway, vonage_params("STOP", secret="wrong")) == 403
    tampered = {**vonage_params("HELP"), "text": "STOP"}
    assert await post_vonage(gateway, tampered) == 403
    unsigned = vonage_params("STOP")
    del unsigned["sig"]
    assert await post_vonage(gateway, unsigned) == 403
    stale = vonage_params("STOP", timestamp=int(time.time()) - 400)
    assert await post_vonage(gateway, stale) == 403
    assert twilio.received == []


@pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
def test_vonage_signature_matches_the_documented_algorithm(method: str) -> None:
    """Every signature method computes what Vonage documents and validates in either case."""
    params = {"msisdn": "447911123456", "to": "14155550199", "text": "a&b=c", "timestamp": "1"}
    expected = documented_vonage_sig(params, "s3cret", method)
    assert vonage_signature(params, "s3cret", method) == expected
    assert valid_vonage_signature({**params, "sig": expected.lower()}, "s3cret", method)
    assert valid_vonage_signature({**params, "sig": expected.upper()}, "s3cret", method)
    assert not valid_vonage_signature({**params, "sig": expected}, "other", method)


def test_vonage_timestamps_older_or_newer_than_300_seconds_are_stale() -> None:
    """fresh accepts a unix time within 300 s of now and nothing else."""
    assert fresh("1700000000", now=1700000300)
    assert fresh("1700000300", now=1700000000)
    assert not fresh("1700000000", now=1700000301)
    assert not fresh("1700000301", now=1700000000)
    assert not fresh("", now=1700000000)
    assert not fresh("-5", now=0)
