"""GET /v1/messages: support search, newest first, paged with a keyset cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.app import Gateway
from gateway.search import Cursor
from tests.conftest import API_TOKEN, Amqp

BASE = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)
STATUSES = ["sent", "failed", "suppressed", "queued", "deferred"]


def created(n: int) -> datetime:
    # Three messages share each instant, as a batch's claim gives its messages one created_at.
    return BASE + timedelta(seconds=n // 3)


@pytest.fixture
async def seeded(amqp: Amqp, pg_pool: asyncpg.Pool) -> None:
    """250 messages: statuses in turn, every 10th in campaign 'spring', every 25th to Jane,
    every 50th an SMS; plus one user_id message that reached Jane as an endpoint."""
    rows = []
    for n in range(250):
        channel = "sms" if n % 50 == 0 else "email"
        recipient = "+14155550100" if channel == "sms" else (
            "Jane@example.com" if n % 25 == 0 else f"user{n}@example.com"
        )
        job = {"id": f"msg-{n:03d}", "channel": channel, "to": {"address": recipient}}
        rows.append((f"msg-{n:03d}", channel, STATUSES[n % 5], orjson.dumps(job).decode(),
                     recipient, "spring" if n % 10 == 0 else None, created(n)))
    await pg_pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, recipient, campaign_id, created_at)"
        " VALUES ($1, $2, 'promotional', $3, $4::jsonb, $5, $6, $7)",
        rows,
    )
    await pg_pool.execute(
        "INSERT INTO messages (id, channel, kind, status, job, created_at)"
        " VALUES ('to-user', 'email', 'transactional', 'sent',"
        " '{\"id\": \"to-user\", \"to\": {\"user_id\": \"u-1\"}}', $1)",
        BASE + timedelta(days=1),
    )
    await pg_pool.execute(
        "INSERT INTO deliveries (message_id, address, status) VALUES"
        " ('to-user', 'jane@example.com', 'sent'), ('to-user', 'jane@work.example', 'failed')"
    )


@pytest.fixture
async def api(
    seeded: None, settings_for: Any, start_gateway: Any
) -> AsyncIterator[aiohttp.ClientSession]:
    gateway: Gateway = await start_gateway(settings_for(), consume=False)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.port}", headers=headers) as http:
        yield http


async def page(api: aiohttp.ClientSession, **params: str) -> dict[str, Any]:
    async with api.get("/v1/messages", params=params) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def every_page(api: aiohttp.ClientSession, **params: str) -> list[list[str]]:
    """The ids of each page, following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        body = await page(api, **params, **({"cursor": cursor} if cursor else {}))
        pages.append([m["id"] for m in body["messages"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor never ran out"


def newest_first(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda i: (created(int(i[4:])), i), reverse=True)


async def test_pages_cover_every_message_once_newest_first(api: aiohttp.ClientSession) -> None:
    """Pages of 40 over 251 messages: no gaps, no repeats, newest first, ties broken by id."""
    pages = await every_page(api, limit="40")
    assert [len(p) for p in pages] == [40] * 6 + [11]
    ids = [i for p in pages for i in p]
    assert len(set(ids)) == len(ids) == 251
    assert ids[0] == "to-user"
    assert ids[1:] == newest_first([f"msg-{n:03d}" for n in range(250)])


async def test_a_page_is_stable_when_newer_messages_arrive(
    api: aiohttp.ClientSession, pg_pool: asyncpg.Pool
) -> None:
    """Messages created after the first page do not shift the next page."""
    first = await page(api, limit="50")
    await pg_pool.execute(
        "INSERT INTO messages (id, channel, kind, status, job, created_at)"
        " SELECT 'new-' || n, 'email', 'promotional', 'sent', '{}', now()"
        " FROM generate_series(1, 30) n"
    )
    second = await page(api, limit="50", cursor=first["next_cursor"])
    expected = newest_first([f"msg-{n:03d}" for n in range(250)])
    assert [m["id"] for m in second["messages"]] == expected[49:99]


async def test_a_message_shows_what_support_needs(api: aiohttp.ClientSession) -> None:
    """Each message has its status as the API shows it, its recipient and its times."""
    body = await page(api, limit="2")
    assert body["messages"][0] == {
        "id": "to-user", "channel": "email", "kind": "transactional", "status": "sent",
        "reason": None, "to": {"user_id": "u-1"}, "campaign_id": None,
        "provider_message_id": None, "attempts": 0,
        "created_at": "2024-03-02T12:00:00.000Z", "updated_at": body["messages"][0]["updated_at"],
    }
    second = body["messages"][1]
    assert second["to"] == {"address": "user249@example.com"}
    assert second["created_at"] == "2024-03-01T12:01:23.000Z"


async def test_address_finds_raw_address_and_endpoint_deliveries_whatever_the_case(
    api: aiohttp.ClientSession,
) -> None:
    """jane@EXAMPLE.com finds the messages to Jane@example.com and the user_id message that
    reached her as an endpoint, paged like any other search."""
    pages = await every_page(api, address="jane@EXAMPLE.com", limit="3")
    jane = newest_first([f"msg-{n:03d}" for n in range(0, 250, 25) if n % 50])
    assert [i for p in pages for i in p] == ["to-user", *jane]
    assert [len(p) for p in pages] == [3, 3]


async def test_a_phone_number_is_normalised_like_the_pipeline_does(
    api: aiohttp.ClientSession,
) -> None:
    """+1 (415) 555-0100 finds the messages recorded to +14155550100."""
    body = await page(api, address="+1 (415) 555-0100")
    assert [m["id"] for m in body["messages"]] == newest_first(
        [f"msg-{n:03d}" for n in range(0, 250, 50)]
    )


async def test_filters_combine(api: aiohttp.ClientSession) -> None:
    """status, campaign_id, channel and since narrow the search together."""
    spring = [i for p in await every_page(api, campaign_id="spring", limit="7") for i in p]
    assert spring == newest_first([f"msg-{n:03d}" for n in range(0, 250, 10)])

    failed = [i for p in await every_page(api, status="failed", campaign_id="spring") for i in p]
    assert failed == []  # every 10th message is n % 5 == 0: sent
    sent = [i for p in await every_page(api, status="sent", campaign_id="spring") for i in p]
    assert sent == spring

    accepted = [i for p in await every_page(api, status="accepted", limit="20") for i in p]
    assert accepted == newest_first([f"msg-{n:03d}" for n in range(3, 250, 5)])
    several = [i for p in await every_page(api, status="failed,deferred") for i in p]
    assert several == newest_first(
        [f"msg-{n:03d}" for n in range(250) if n % 5 in (1, 4)]
    )

    sms = [i for p in await every_page(api, channel="sms") for i in p]
    assert sms == newest_first([f"msg-{n:03d}" for n in range(0, 250, 50)])

    since = (BASE + timedelta(seconds=80)).isoformat()
    recent = [i for p in await every_page(api, since=since, status="sent") for i in p]
    assert recent == ["to-user", *newest_first(
        [f"msg-{n:03d}" for n in range(240, 250) if n % 5 == 0]
    )]
    by_day = [i for p in await every_page(api, since="2024-03-02") for i in p]
    assert by_day == ["to-user"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "lost"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"since": "2024-03-01T12:00:00"}, "since"),
        ({"address": "not an address@"}, "address"),
        ({"address": "+1 555"}, "address"),
        ({"channel": "fax"}, "channel"),
        ({"limit": "\u00b2"}, "limit"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"campaign_id": "spring\x00"}, "campaign_id"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    api: aiohttp.ClientSession, params: dict[str, str], field: str
) -> None:
    """A malformed cursor, status, limit, time or address is answered 422 invalid_request."""
    async with api.get("/v1/messages", params=params) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:")


def test_cursor_round_trips_and_rejects_what_it_did_not_make() -> None:
    """A cursor decodes to the key it was made from; anything else is a ValueError."""
    cursor = Cursor(datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc), "msg/1 é")
    assert Cursor.decode(cursor.encode()) == cursor
    for text in ("", "abc", Cursor(cursor.created_at.replace(tzinfo=None), "x").encode()):
        with pytest.raises(ValueError):
            Cursor.decode(text)
