"""The shared HTTP helper: Retry-After parsing and the default reading of refused statuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.errors import PermanentSendError, TransientSendError
from adapters.http import HttpResponse, classify_status, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
        ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),  # in the past: go now
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Delay-seconds and HTTP dates become seconds from now; anything else is no hint."""
    assert parse_retry_after(value, now=NOW) == seconds


def response(status: int, retry_after: float | None = None) -> HttpResponse:
    return HttpResponse(status=status, headers={}, json=None, text="nope", retry_after=retry_after)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_default_transient_statuses(status: int) -> None:
    """429, 408 and 5xx are transient and keep the Retry-After hint."""
    error = classify_status(response(status, 7.0), provider="acme")
    assert isinstance(error, TransientSendError)
    assert error.retry_after == 7.0
    assert error.reason == f"acme answered HTTP {status}: nope"


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_default_permanent_statuses(status: int) -> None:
    """Other 4xx statuses are permanent."""
    assert isinstance(classify_status(response(status)), PermanentSendError)
