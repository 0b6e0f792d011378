"""Phone numbers checked with phonenumbers, device tokens, and the per-channel normal form (pure)."""

from __future__ import annotations

import pytest

from gateway.addresses import normalise_address, normalise_phone, normalise_push_token
from gateway.errors import MessageFailed


@pytest.mark.parametrize(
    ("number", "normal"),
    [
        ("+1 (415) 555-0100", "+14155550100"),
        (" +44 20.7946.0958 ", "+442079460958"),
        ("+351 912 345 678", "+351912345678"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+55 (11) 91234-5678", "+5511912345678"),
    ],
)
def test_valid_numbers_are_written_in_e164(number: str, normal: str) -> None:
    """A valid international number, separators and surrounding spaces included, comes back in E.164."""
    assert normalise_phone(number) == normal


@pytest.mark.parametrize(
    "number",
    [
        "4155550100",  # no country code: there is no default region
        "+1 800 FLOWERS",  # phonenumbers would read the letters as keypad digits
        "tel:+14155550100",
        "+14155550100 ext. 12",
        "+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff10\uff10",  # fullwidth digits
        "++14155550100",
        "+999 123 4567",  # no such country code
        "",
    ],
)
def test_malformed_numbers_are_refused(number: str) -> None:
    """Anything but '+', ASCII digits and simple separators is refused before phonenumbers reads it."""
    with pytest.raises(MessageFailed) as caught:
        normalise_phone(number)
    assert caught.value.reason == "invalid phone number (E.164 expected, e.g. +14155550100)"


@pytest.mark.parametrize(("number", "code"), [("+1234567", 1), ("+44 7700 900123", 44)])
def test_well_formed_numbers_that_cannot_exist_are_refused_naming_the_country_code(
    number: str, code: int
) -> None:
    """A well-formed number that is not valid for its country code is refused, the reason naming the code."""
    with pytest.raises(MessageFailed) as caught:
        normalise_phone(number)
    assert caught.value.reason.startswith("invalid phone number (E.164 expected")
    assert caught.value.reason.endswith(f"not a valid number for country code +{code}")


@pytest.mark.parametrize("token", ["", " ", "a b", "tab\there", "nul\x00", "t" * 513])
def test_bad_device_tokens_are_refused(token: str) -> None:
    """A device token that is empty, holds whitespace or control characters, or is over 512 characters is refused."""
    with pytest.raises(MessageFailed) as caught:
        normalise_push_token(token)
    assert caught.value.reason.startswith("invalid device token")


@pytest.mark.parametrize(
    ("channel", "address", "normal"),
    [
        ("email", " Jane@Example.COM", "Jane@example.com"),
        ("sms", "+1 415 555 0100", "+14155550100"),
        ("push", " " + "t" * 512 + "\n", "t" * 512),
    ],
)
def test_each_channel_has_its_normal_form(channel: str, address: str, normal: str) -> None:
    """normalise_address applies the email, phone or device-token rule of the channel."""
    assert normalise_address(channel, address) == normal


def test_an_unknown_channel_has_no_normal_form() -> None:
    """normalise_address refuses a channel it does not know."""
    with pytest.raises(MessageFailed):
        normalise_address("fax", "+14155550100")
