"""GET /v1/reports/deliverability over messages and opt-outs seeded straight into the tables."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.app import Gateway
from tests.conftest import API_TOKEN, Amqp


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


# (created_at, channel, status, reason, campaign_id, how many)
MESSAGES = [
    ("2024-02-29 23:59:59.999999", "email", "sent", None, "spring", 1),  # before the range
    ("2024-03-01 00:00:00", "email", "sent", None, "spring", 3),
    ("2024-03-01 08:00:00", "sms", "delivered", None, "spring", 2),
    ("2024-03-01 09:00:00", "sms", "undelivered", "undelivered: error 30003", "spring", 1),
    ("2024-03-01 10:00:00", "email", "failed", "550 mailbox unavailable", None, 1),
    ("2024-03-01 11:00:00", "email", "suppressed", "opted_out", "spring", 2),
    ("2024-03-01 11:30:00", "sms", "suppressed", "opted_out (Twilio 21610: unsubscribed)", None, 1),
    ("2024-03-01 12:00:00", "email", "suppressed", "daily_cap", None, 1),
    ("2024-03-01 13:00:00", "push", "expired", "expires_at passed before sending", None, 1),
    ("2024-03-01 14:00:00", "email", "deferred", "quiet_hours", "spring", 1),
    ("2024-03-01 23:59:59.999999", "email", "sent", None, None, 1),
    # nothing on 2024-03-02
    ("2024-03-03 00:00:00", "sms", "processing", None, None, 1),
    ("2024-03-03 06:00:00", "email", "suppressed", "campaign_cap", "spring", 1),
    ("2024-03-03 07:00:00", "push", "sent", None, None, 2),
    ("2024-03-04 00:00:00", "email", "sent", None, "spring", 1),  # after the range
]
OPT_OUTS = [
    ("2024-03-01 05:00:00", "email", 2),
    ("2024-03-01 06:00:00", "sms", 1),
    ("2024-03-03 05:00:00", "push", 1),
    ("2024-03-04 00:00:00", "email", 1),  # after the range
]
RANGE = {"from": "2024-03-01", "to": "2024-03-03"}


def figures(
    *, messages: int = 0, sent: int = 0, delivered: int = 0, undelivered: int = 0, failed: int = 0,
    expired: int = 0, pending: int = 0, suppressed: dict[str, int] | None = None,
    opt_outs: int | None = 0, delivery_rate: float | None = None,
) -> dict[str, Any]:
    """The figures of a day or of the totals, zero unless given."""
    reasons = suppressed or {}
    return {
        "messages": messages, "sent": sent, "delivered": delivered, "undelivered": undelivered,
        "failed": failed, "expired": expired, "pending": pending,
        "suppressed": {"total": sum(reasons.values()), "by_reason": reasons},
        "opt_outs": opt_outs, "delivery_rate": delivery_rate,
    }


@pytest.fixture
async def seeded(amqp: Amqp, pg_pool: asyncpg.Pool) -> None:
    """The rows of MESSAGES and OPT_OUTS, on clean tables."""
    rows = [
        (f"{created}-{channel}-{status}-{n}", channel, status, reason, campaign, at(created))
        for created, channel, status, reason, campaign, count in MESSAGES
        for n in range(count)
    ]
    await pg_pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, reason, campaign_id, created_at)"
        " VALUES ($1, $2, 'promotional', $3, '{}', $4, $5, $6)",
        rows,
    )
    await pg_pool.executemany(
        "INSERT INTO opt_outs (channel, address, source, created_at) VALUES ($1, $2, 'api', $3)",
        [(channel, f"{created}-{n}", at(created))
         for created, channel, count in OPT_OUTS for n in range(count)],
    )


@pytest.fixture
async def gateway(seeded: None, settings_for: Any, start_gateway: Any) -> Gateway:
    """An HTTP-only gateway over the seeded tables."""
    started: Gateway = await start_gateway(settings_for(), consume=False)
    return started


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the gateway, with the API token."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.port}", headers=headers) as http:
        yield http


async def report(api: aiohttp.ClientSession, **params: str) -> dict[str, Any]:
    async with api.get("/v1/reports/deliverability", params=params) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_totals_and_every_day_of_the_range(api: aiohttp.ClientSession) -> None:
    """Every field, for the whole range and for each UTC day, an empty day included."""
    body = await report(api, **RANGE)
    days = body.pop("days")
    assert body == {
        "from": "2024-03-01", "to": "2024-03-03", "channel": None, "campaign_id": None,
        **figures(
            messages=18, sent=9, delivered=2, undelivered=1, failed=1, expired=1, pending=2,
            suppressed={"campaign_cap": 1, "daily_cap": 1, "opted_out": 3}, opt_outs=4,
            delivery_rate=0.8,
        ),
    }
    assert days == [
        {"date": "2024-03-01", **figures(
            messages=14, sent=7, delivered=2, undelivered=1, failed=1, expired=1, pending=1,
            suppressed={"daily_cap": 1, "opted_out": 3}, opt_outs=3, delivery_rate=0.75,
        )},
        {"date": "2024-03-02", **figures()},
        {"date": "2024-03-03", **figures(
            messages=4, sent=2, pending=1, suppressed={"campaign_cap": 1}, opt_outs=1,
            delivery_rate=1.0,
        )},
    ]


async def test_channel_filter_narrows_messages_and_opt_outs(api: aiohttp.ClientSession) -> None:
    """channel=sms counts only SMS messages and SMS opt-outs."""
    body = await report(api, **RANGE, channel="sms")
    assert body["channel"] == "sms"
    assert {k: body[k] for k in figures()} == figures(
        messages=5, sent=3, delivered=2, undelivered=1, pending=1, suppressed={"opted_out": 1},
        opt_outs=1, delivery_rate=0.6667,
    )
    assert [(d["date"], d["messages"], d["opt_outs"]) for d in body["days"]] == [
        ("2024-03-01", 4, 1), ("2024-03-02", 0, 0), ("2024-03-03", 1, 0),
    ]


async def test_campaign_filter_counts_its_messages_and_leaves_opt_outs_out(
    api: aiohttp.ClientSession,
) -> None:
    """campaign_id counts that campaign's messages; opt-outs, not tied to a campaign, are null."""
    body = await report(api, **RANGE, campaign_id="spring")
    assert body["campaign_id"] == "spring"
    assert {k: body[k] for k in figures()} == figures(
        messages=10, sent=6, delivered=2, undelivered=1, pending=1,
        suppressed={"campaign_cap": 1, "opted_out": 2}, opt_outs=None, delivery_rate=0.8333,
    )
    assert [d["opt_outs"] for d in body["days"]] == [None, None, None]

    both = await report(api, **RANGE, campaign_id="spring", channel="email")
    assert [(d["messages"], d["sent"], d["suppressed"]["total"]) for d in both["days"]] == [
        (6, 3, 2), (0, 0, 0), (1, 0, 1),
    ]


async def test_one_day_and_an_unknown_campaign(api: aiohttp.ClientSession) -> None:
    """from = to is one day; a campaign without messages gives zeros, not an error."""
    body = await report(api, **{"from": "2024-03-03", "to": "2024-03-03"})
    assert [d["date"] for d in body["days"]] == ["2024-03-03"]
    assert body["messages"] == 4
    empty = await report(api, **RANGE, campaign_id="never")
    assert empty["messages"] == 0 and empty["delivery_rate"] is None


async def test_default_range_is_the_last_30_days(api: aiohttp.ClientSession) -> None:
    """Without from and to the report covers the 30 UTC days up to today."""
    body = await report(api)
    today = datetime.now(timezone.utc).date()
    assert body["to"] == today.isoformat()
    assert body["from"] == (today - timedelta(days=29)).isoformat()
    assert len(body["days"]) == 30


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2024-03-05", "to": "2024-03-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01"}, "to"),
        ({"from": "2023-01-01", "to": "2024-03-01"}, "from"),
        ({"channel": "fax"}, "channel"),
        ({"campaign_id": "x" * 129}, "campaign_id"),
        ({"campaign_id": "spring\x00"}, "campaign_id"),
        ({"to": "0001-01-05"}, "to"),
        ({"to": "9999-12-31"}, "to"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    api: aiohttp.ClientSession, params: dict[str, str], field: str
) -> None:
    """A malformed date, a reversed or too long range, an unknown channel: 422 invalid_request."""
    async with api.get("/v1/reports/deliverability", params=params) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:")


async def test_the_report_needs_a_key(gateway: Gateway) -> None:
    """Like every /v1 route, the report is refused without a bearer token."""
    url = f"http://127.0.0.1:{gateway.port}/v1/reports/deliverability"
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:
        assert response.status == 401
