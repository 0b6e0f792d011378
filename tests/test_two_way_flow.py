"""Two-way SMS meets the pipeline: a STOP suppresses what follows, a START lets it through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Amqp
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.test_email_flow import statuses
from tests.test_inbound import NUMBER, OTHER_NUMBER, PUBLIC_URL, SENDER, register, text_twilio


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def full_gateway(amqp: Amqp, twilio: FakeTwilio, settings_for: Any, start_gateway: Any) -> Any:
    """Consumer and HTTP API with SMS through the fake Twilio."""
    return await start_gateway(settings_for(
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_base_url=twilio.url,
        sms_from=NUMBER, public_url=PUBLIC_URL, sms_rate_per_second=1000,
    ))


def otp(job_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "channel": "sms", "to": {"address": SENDER},
            "content": {"body": "Your code is 1234"}, **extra}


async def test_stop_then_transactional_sms_is_suppressed_and_start_lets_it_through(
    full_gateway: Any, amqp: Amqp, twilio: FakeTwilio
) -> None:
    """After STOP even a transactional SMS to that sender is suppressed; after START it is sent."""
    await register(full_gateway)
    await text_twilio(full_gateway, "Stop.")
    await amqp.publish(otp("after-stop"), routing_key="send.transactional")
    events = await amqp.wait_events(lambda ev: "suppressed" in statuses(ev, "after-stop"))
    assert [e["reason"] for e in events if e.get("status") == "suppressed"] == ["opted_out"]

    await text_twilio(full_gateway, "START")
    await amqp.publish(otp("after-start"), routing_key="send.transactional")
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "after-start"))
    assert [r.form["Body"] for r in twilio.sent_to(SENDER)] == ["Your code is 1234"]


async def test_number_scoped_stop_blocks_only_that_number(
    full_gateway: Any, amqp: Amqp, twilio: FakeTwilio
) -> None:
    """STOP on a number with scope 'number' suppresses messages from it, not from our other number."""
    await register(full_gateway, opt_out_scope="number")
    await text_twilio(full_gateway, "stop")
    await amqp.publish(otp("from-default"))  # from GATEWAY_SMS_FROM, the number STOPped
    await amqp.publish(otp("from-other", **{"from": OTHER_NUMBER}))
    events = await amqp.wait_events(
        lambda ev: "suppressed" in statuses(ev, "from-default") and "sent" in statuses(ev, "from-other")
    )
    assert [r.form["From"] for r in twilio.sent_to(SENDER)] == [OTHER_NUMBER]
    assert "sent" not in statuses(events, "from-default")
