"""Masking of personal data, and the structlog pipeline that renders masked JSON lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway.logging import UtcTimestamper, configure_logging, mask_personal_data
from gateway.settings import LogFormat


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("jane@example.com", "j***@example.com"),
        ("Jane.Doe+promo@mail.example.co.uk", "J***@mail.example.co.uk"),
        (
            "recipient refused: 550 5.1.1 <bob@example.org>: mailbox unavailable",
            "recipient refused: 550 5.1.1 <b***@example.org>: mailbox unavailable",
        ),
        ("o'brien@example.com", "o***@example.com"),
        ("x{@example.com", "x***@example.com"),
        ("a@b.io and c@d.io", "a***@b.io and c***@d.io"),
    ],
)
def test_email_addresses_keep_only_first_character_and_domain(text: str, masked: str) -> None:
    """An email address is masked to its first character and its domain."""
    assert mask_personal_data(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+14155550100", "+*********00"),
        ("sms to +44 20 7946 0958 failed", "sms to +**********58 failed"),
        ("+1 (415) 555-0123", "+*********23"),
        ("call 020 7946 0958", "call *********58"),
        ("4155550100", "********00"),
    ],
)
def test_phone_numbers_keep_only_the_last_two_digits(text: str, masked: str) -> None:
    """E.164 numbers and long digit runs (separators allowed) keep only their last two digits."""
    assert mask_personal_data(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "job-1",
        "order-42",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "msg_01HQ3Z8K9VJ2RZ",
        "2024-05-01T12:34:56.789Z",
        "2024-05-01T12:34:56+02:00",
        "deferred until 2024-05-01 12:34:56.123456+00:00",
        "2024-05-01",
        "attempt 3 of 8",
        "451 4.3.0 try again later",
        "order 123456789",
        "took 1234.5 ms",
        "127.0.0.1:5672",
        "the quick brown fox; 50% off",
        "user@ and @example.com",
    ],
)
def test_ids_timestamps_short_numbers_and_text_are_left_alone(text: str) -> None:
    """Message ids, timestamps, short numbers and ordinary text pass unchanged."""
    assert mask_personal_data(text) == text


@given(address=st.emails(), template=st.sampled_from(["{}", "to {}", "<{}>", "{}, {}"]))
def test_no_generated_email_address_survives_masking(address: str, template: str) -> None:
    """Any RFC 5322 address is masked to its first character and domain, so it never survives verbatim."""
    local, _, domain = address.rpartition("@")
    masked = mask_personal_data(template.format(address, address))
    assert masked == template.format(*[f"{local[0]}***@{mask_personal_data(domain)}"] * 2)
    if set(local) != {"*"}:  # "*@a.io" masks to "****@a.io": the mask character, not a leak
        assert address not in masked


@given(number=st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_no_e164_number_survives_masking(number: str) -> None:
    """Every E.164 number is masked down to its last two digits."""
    masked = mask_personal_data(f"sent to {number}.")
    assert masked == f"sent to +{'*' * (len(number) - 3)}{number[-2:]}."


@contextmanager
def configured_json_logging() -> Iterator[None]:
    """configure_logging(json) for the block; structlog and the stdlib root logger restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(LogFormat.json)
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = err.splitlines()
    return [orjson.loads(line) for line in lines]


def test_json_pipeline_writes_one_masked_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    """Each event is one JSON line on stderr, with `to` and error strings masked and our ids kept."""
    with configured_json_logging():
        log = structlog.get_logger("gateway.test")
        log.info(
            "message.outcome",
            message_id="job-4155550100",
            status="failed",
            to="jane@example.com",
            reason="recipient refused: 550 <jane@example.com>",
            error="SMS to +14155550100 refused",
            attempt=2,
        )
        log.warning("scheduler.tick_failed", error="timeout")
        log.debug("not.shown")
    captured = capsys.readouterr()
    assert captured.out == ""
    first, second = json_lines(captured.err)
    assert first["event"] == "message.outcome"
    assert first["level"] == "info"
    assert first["timestamp"].endswith("Z")
    assert first["message_id"] == "job-4155550100"
    assert first["to"] == "j***@example.com"
    assert first["reason"] == "recipient refused: 550 <j***@example.com>"
    assert first["error"] == "SMS to +*********00 refused"
    assert first["attempt"] == 2
    assert (second["event"], second["level"], second["error"]) == (
        "scheduler.tick_failed",
        "warning",
        "timeout",
    )


def test_json_pipeline_masks_nested_values_and_exceptions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Dicts, lists and formatted tracebacks are masked too."""
    with configured_json_logging():
        log = structlog.get_logger("gateway.test")
        try:
            raise ValueError("bad address bob@example.org")
        except ValueError:
            log.exception("adapter.unexpected_error", detail={"to": ["+14155550100"]})
    [line] = json_lines(capsys.readouterr().err)
    assert line["detail"] == {"to": ["+*********00"]}
    assert "ValueError: bad address b***@example.org" in line["exception"]
    assert "bob@" not in line["exception"]


def test_stdlib_records_are_rendered_as_masked_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A library logging through the stdlib gets the same JSON line, its message masked as well."""
    with configured_json_logging():
        logging.getLogger("aiosmtplib").warning(
            "connection lost while sending to %s", "jane@example.com"
        )
        logging.getLogger("aiosmtplib").info("below the root level: dropped")
    [line] = json_lines(capsys.readouterr().err)
    assert line["event"] == "connection lost while sending to j***@example.com"
    assert line["level"] == "warning"


def test_timestamps_are_utc_iso_to_the_microsecond_across_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kept date-and-time prefix follows the clock into the next second, day and year."""
    stamper = UtcTimestamper()
    clock = iter([1_800_000_000.25, 1_800_000_000.999999, 1_800_000_001.0, 1_830_297_599.5,
                  1_830_297_600.000001])
    monkeypatch.setattr("gateway.logging.time.time", lambda: next(clock))
    stamps = [stamper(None, "info", {})["timestamp"] for _ in range(5)]
    assert stamps == [
        "2027-01-15T08:00:00.250000Z",
        "2027-01-15T08:00:00.999999Z",
        "2027-01-15T08:00:01.000000Z",
        "2027-12-31T23:59:59.500000Z",
        "2028-01-01T00:00:00.000001Z",
    ]
    for stamp in stamps:  # what structlog's isoformat() stamp gave, read back the same way
        assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo == timezone.utc
