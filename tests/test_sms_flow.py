"""SMS through the whole pipeline against a fake Twilio, and Twilio's status callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from adapters.twilio_signature import compute_signature
from tests.conftest import Amqp
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.test_email_flow import statuses

PUBLIC_URL = "https://gateway.example.com"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    yield fake
    await fake.stop()


def sms_settings(settings_for: Any, twilio: FakeTwilio, **overrides: Any) -> Any:
    return settings_for(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=twilio.url,
        sms_from="+14155550199",
        public_url=PUBLIC_URL,
        sms_rate_per_second=1000,
        **overrides,
    )


def sms_job(job_id: str, to: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "channel": "sms", "to": {"address": to},
            "content": {"body": "Hi {{ name }}, code {{ code }}"},
            "data": {"name": "Ana", "code": "4321"}, **extra}


async def test_sms_job_reaches_twilio_and_is_sent(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any
) -> None:
    """An SMS job is POSTed to Twilio with our number, the rendered body and the callback URL."""
    await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("sms-1", "+44 7911 123456"), routing_key="send.transactional")
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "sms-1"))
    [request] = twilio.received
    assert request.form["To"] == "+447911123456"
    assert request.form["From"] == "+14155550199"
    assert request.form["Body"] == "Hi Ana, code 4321"
    assert request.form["StatusCallback"] == f"{PUBLIC_URL}/v1/status/twilio"
    assert events[-1]["provider_message_id"].startswith("SM")


async def test_job_from_chooses_another_of_our_numbers(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any
) -> None:
    """A job's `from` overrides the default origination number."""
    await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("sms-from", "+447911123456", **{"from": "+14155550123"}))
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "sms-from"))
    assert twilio.received[0].form["From"] == "+14155550123"


async def test_21610_records_a_provider_opt_out_and_suppresses(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool
) -> None:
    """Twilio's 21610 suppresses the message, records the opt-out (source provider) and announces it."""
    await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("stopped", "+447910021610"))
    events = await amqp.wait_events(
        lambda ev: "suppressed" in statuses(ev, "stopped")
        and any(e.get("event") == "endpoint.opted_out" for e in ev)
    )
    suppressed = next(e for e in events if e.get("status") == "suppressed")
    assert suppressed["reason"].startswith("opted_out")
    announced = next(e for e in events if e.get("event") == "endpoint.opted_out")
    assert (announced["_key"], announced["address"], announced["source"]) == (
        "endpoint.opted_out", "+447910021610", "provider",
    )
    source = await pg_pool.fetchval(
        "SELECT source FROM opt_outs WHERE channel = 'sms' AND address = '+447910021610'"
    )
    assert source == "provider"

    await amqp.publish(sms_job("stopped-again", "+447910021610"), routing_key="send.transactional")
    events = await amqp.wait_events(lambda ev: "suppressed" in statuses(ev, "stopped-again"))
    assert len(twilio.sent_to("+447910021610")) == 1  # the second never reached Twilio


async def test_invalid_number_fails_for_good(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any
) -> None:
    """Twilio's 21211 (invalid To) fails the message without retry."""
    await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("bad-to", "+447910021211"))
    events = await amqp.wait_events(lambda ev: "failed" in statuses(ev, "bad-to"))
    assert "21211" in events[-1]["reason"]
    assert len(twilio.sent_to("+447910021211")) == 1


async def test_429_is_retried_and_then_sent(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any
) -> None:
    """A 429 with Retry-After defers the message at least that long, then it is sent."""
    await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("busy", "+447910000429"))
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "busy"))
    assert statuses(events, "busy") == ["accepted", "deferred", "sent"]
    first, second = twilio.sent_to("+447910000429")
    assert second.at - first.at >= 0.9


async def _callback(gateway: Any, params: dict[str, str], signature: str | None = None) -> int:
    url = f"{PUBLIC_URL}/v1/status/twilio"
    headers = {"X-Twilio-Signature": signature or compute_signature(AUTH_TOKEN, url, params)}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{gateway.port}/v1/status/twilio", data=params, headers=headers
        ) as response:
            return response.status


async def test_status_callback_is_verified_recorded_once_and_published(
    amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool
) -> None:
    """A signed 'delivered' callback publishes message.delivered once; a forged one gets 403."""
    gateway = await start_gateway(sms_settings(settings_for, twilio))
    await amqp.publish(sms_job("receipt", "+447911123456"))
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "receipt"))
    sid = events[-1]["provider_message_id"]
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID,
              "To": "+447911123456", "ApiVersion": "2010-04-01"}

    assert await _callback(gateway, params, signature="forged=") == 403
    assert await _callback(gateway, params) == 204
    assert await _callback(gateway, params) == 204  # Twilio retried: processed once
    events = await amqp.wait_events(lambda ev: "delivered" in statuses(ev, "receipt"))
    assert statuses(events, "receipt") == ["accepted", "sent", "delivered"]
    assert events[-1]["_key"] == "message.delivered"
    status = await pg_pool.fetchval("SELECT status FROM messages WHERE id = 'receipt'")
    assert status == "delivered"

    failed = {**params, "MessageStatus": "failed", "ErrorCode": "30003"}
    assert await _callback(gateway, failed) == 204
    events = await amqp.wait_events(lambda ev: "undelivered" in statuses(ev, "receipt"))
    assert events[-1]["reason"] == "failed: error 30003"
