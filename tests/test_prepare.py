"""Which numbers an SMS is prepared for: the job's own is checked in full, the user's stored ones
are taken in the E.164 form they were stored in (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.base import OutboundSms
from gateway.addresses import normalise_phone, stored_phone
from gateway.errors import MessageFailed
from gateway.jobs import Job, parse_job
from gateway.prepare import prepare, readdress
from gateway.render import Renderer
from gateway.settings import Settings


def sms_job(to: dict[str, str]) -> Job:
    body = {"id": "job-1", "channel": "sms", "to": to, "content": {"body": "Hi {{ name }}"},
            "data": {"name": "Ana"}}
    return parse_job(orjson.dumps(body), max_bytes=10_000)


@pytest.fixture
def settings() -> Settings:
    return Settings.load(database_url="postgresql://x@127.0.0.1/x",
                         amqp_url="amqp://x@127.0.0.1/", api_token="x" * 20)


def prepared(job: Job, address: str, settings: Settings) -> Any:
    return prepare(job, address, renderer=Renderer(), settings=settings)


@pytest.mark.parametrize("number", ["+14155550100", "+442079460958", "+5511912345678"])
def test_a_stored_number_is_sent_to_as_stored(number: str, settings: Settings) -> None:
    """A user's endpoint, stored as normalise_phone wrote it, is the number the SMS goes to."""
    message = prepared(sms_job({"user_id": "u1"}), number, settings)
    assert isinstance(message, OutboundSms)
    assert (message.to, message.body) == (number, "Hi Ana")
    assert stored_phone(number) == normalise_phone(number) == number


def test_a_stored_number_is_not_checked_against_the_metadata_again(settings: Settings) -> None:
    """Its validity was checked when it was stored; a row in E.164 shape is not parsed again
    (phonenumbers would refuse this one: no such country code), the provider has the last word."""
    message = prepared(sms_job({"user_id": "u1"}), "+9991234567", settings)
    assert message.to == "+9991234567"


def test_a_stored_number_in_another_spelling_is_normalised_or_refused(settings: Settings) -> None:
    """A row not in E.164 (written by hand) still goes through the full check."""
    message = prepared(sms_job({"user_id": "u1"}), " +1 (415) 555-0100 ", settings)
    assert message.to == "+14155550100"
    with pytest.raises(MessageFailed, match="E.164 expected"):
        prepared(sms_job({"user_id": "u1"}), "4155550100", settings)


@pytest.mark.parametrize(
    ("number", "reason"),
    [("+1234567", "not a valid number for country code +1"), ("+9991234567", "E.164 expected")],
)
def test_the_jobs_own_number_is_checked_in_full_even_in_e164_shape(
    number: str, reason: str, settings: Settings
) -> None:
    """A number the job names itself has to be valid for its country, not merely well formed."""
    with pytest.raises(MessageFailed, match=reason.replace("+", r"\+")):
        prepared(sms_job({"address": number}), number, settings)


def test_another_endpoint_of_the_user_gets_the_same_message(settings: Settings) -> None:
    """readdress keeps the rendered body and takes the other stored number."""
    first = prepared(sms_job({"user_id": "u1"}), "+14155550100", settings)
    other = readdress(first, "+442079460958", settings=settings, promotional=False)
    assert isinstance(other, OutboundSms)
    assert (other.to, other.body, other.message_id) == ("+442079460958", "Hi Ana", "job-1")
