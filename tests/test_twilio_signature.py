"""X-Twilio-Signature against twilio-python's test vectors, and status callback parsing."""

from __future__ import annotations

import pytest

from adapters.twilio_signature import (
    InvalidStatusCallback,
    StatusCallback,
    collect_params,
    compute_signature,
    parse_status_callback,
    validate_signature,
)

TOKEN = "12345"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
URL_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
URL_80 = "http://mycompany.com:80/myapp.php?foo=1&bar=2"
URL_1234 = "http://mycompany.com:1234/myapp.php?foo=1&bar=2"


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        (URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (URL_443, "kvajT1Ptam85bY51eRf/AJRuM3w="),
        (URL_80, "0ZXoZLH/DfblKGATFgpif+LLRf4="),
        (URL_1234, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    ],
)
def test_vectors(url: str, signature: str) -> None:
    """compute_signature reproduces each twilio-python vector and validate_signature accepts it."""
    assert compute_signature(TOKEN, url, PARAMS) == signature
    assert validate_signature(TOKEN, url, PARAMS, signature)


def test_default_port_is_optional_both_ways() -> None:
    """A URL is accepted whether Twilio signed it with or without the default port."""
    assert validate_signature(TOKEN, URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert validate_signature(TOKEN, URL_443, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert validate_signature(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS,
                              "0ZXoZLH/DfblKGATFgpif+LLRf4=")


def test_a_non_default_port_is_not_stripped() -> None:
    """A signature for :1234 does not validate for the URL without that port, nor vice versa."""
    assert not validate_signature(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS,
                                  "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")


def test_tampering_is_detected() -> None:
    """A changed parameter, an extra parameter or a wrong token fails validation."""
    signature = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert not validate_signature(TOKEN, URL, {**PARAMS, "Digits": "9999"}, signature)
    assert not validate_signature(TOKEN, URL, {**PARAMS, "Extra": "1"}, signature)
    assert not validate_signature("54321", URL, PARAMS, signature)
    assert not validate_signature(TOKEN, URL, PARAMS, "")


def test_multi_valued_parameters_are_signed_sorted() -> None:
    """A repeated name signs each value in sorted order, whatever order the form had."""
    forward = collect_params([("MediaUrl", "b"), ("MediaUrl", "a"), ("Body", "x")])
    assert forward == {"MediaUrl": ["b", "a"], "Body": ["x"]}
    expected = compute_signature(TOKEN, URL, {"Body": "x", "MediaUrl": ["a", "b"]})
    assert compute_signature(TOKEN, URL, forward) == expected


def test_parse_status_callback() -> None:
    """MessageSid, MessageStatus (lower-cased) and ErrorCode come out as a tuple."""
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "Undelivered", "ErrorCode": "30003",
              "AccountSid": "AC" + "0" * 32}
    assert parse_status_callback(params) == ("SM" + "a" * 32, "undelivered", "30003")
    legacy = collect_params([("SmsSid", "SM1"), ("SmsStatus", "delivered")])
    delivered = parse_status_callback(legacy)
    assert delivered == StatusCallback("SM1", "delivered", None)


def test_status_callback_without_sid_is_refused() -> None:
    """A callback with no MessageSid or no status raises InvalidStatusCallback."""
    with pytest.raises(InvalidStatusCallback):
        parse_status_callback({"MessageStatus": "sent"})
    with pytest.raises(InvalidStatusCallback):
        parse_status_callback({"MessageSid": "SM1"})
