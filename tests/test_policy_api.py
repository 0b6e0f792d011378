"""Global limits and campaign rules over HTTP, against a gateway started in process."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from gateway.app import Gateway
from gateway.rules import CampaignRules, Limits, effective_daily_cap, effective_quiet_hours
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

DEFAULT_LIMITS = {
    "daily_cap": None,
    "daily_cap_per_channel": {},
    "quiet_hours": None,
    "default_timezone": "UTC",
    "transactional_bypass": True,
}


async def test_limits_never_set_are_the_defaults(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET /v1/limits before any PUT answers the defaults: no caps, no quiet hours, UTC, bypass on."""
    async with open_client(http_gateway).get("/v1/limits") as response:
        assert response.status == 200
        assert await response.json() == DEFAULT_LIMITS


async def test_put_limits_stores_the_normal_form_that_get_returns(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """PUT /v1/limits answers and stores the normalised rules, which GET returns and the pipeline's parser reads."""
    client = open_client(http_gateway)
    body = {
        "transactional_bypass": False,
        "quiet_hours": {"end": "08:00", "start": "21:00"},
        "daily_cap_per_channel": {"sms": 1, "email": None},
        "daily_cap": 3,
        "default_timezone": "Europe/Lisbon",
    }
    async with client.put("/v1/limits", json=body) as response:
        assert response.status == 200
        answered = await response.json()
    expected = {
        "daily_cap": 3,
        "daily_cap_per_channel": {"email": None, "sms": 1},
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "default_timezone": "Europe/Lisbon",
        "transactional_bypass": False,
    }
    assert answered == expected
    async with client.get("/v1/limits") as response:
        assert await response.json() == expected
    stored = orjson.loads(await pg_pool.fetchval("SELECT rules::text FROM policy"))
    assert stored == expected
    assert Limits.from_json(stored).to_json() == expected


async def test_put_limits_replaces_the_whole_policy(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Keys left out of a PUT take their defaults, whatever was set before."""
    client = open_client(http_gateway)
    async with client.put(
        "/v1/limits", json={"daily_cap": 5, "quiet_hours": {"start": "22:00", "end": "07:00"}}
    ):
        pass
    async with client.put("/v1/limits", json={"default_timezone": "Asia/Tokyo"}) as response:
        assert await response.json() == {**DEFAULT_LIMITS, "default_timezone": "Asia/Tokyo"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"daily_cap": -1}, "daily_cap"),
        ({"daily_cap": "5"}, "daily_cap"),
        ({"daily_cap": True}, "daily_cap"),
        ({"daily_cap_per_channel": {"fax": 1}}, "daily_cap_per_channel.fax.[key]"),
        ({"daily_cap_per_channel": {"sms": -2}}, "daily_cap_per_channel.sms"),
        ({"quiet_hours": {"start": "25:00", "end": "08:00"}}, "quiet_hours"),
        ({"quiet_hours": {"start": "21:00"}}, "quiet_hours"),
        ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, "quiet_hours"),
        ({"default_timezone": "Nowhere/Land"}, "default_timezone"),
        ({"transactional_bypass": "yes"}, "transactional_bypass"),
        ({"weekly_cap": 9}, "weekly_cap"),
    ],
)
async def test_invalid_limits_are_answered_422_naming_the_field(
    body: dict[str, Any], field: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Limits that break a rule are answered 422 invalid_request naming the field, and the policy is unchanged."""
    client = open_client(http_gateway)
    async with client.put("/v1/limits", json=body) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:"), error["message"]
    async with client.get("/v1/limits") as response:
        assert await response.json() == DEFAULT_LIMITS


async def test_limits_body_that_is_not_json_is_answered_400(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A PUT /v1/limits body that is not JSON is answered 400 invalid_json."""
    async with open_client(http_gateway).put("/v1/limits", data=b"{daily_cap: 1}") as response:
        assert response.status == 400
        assert (await error_of(response))["code"] == "invalid_json"


async def test_campaign_keeps_absent_overrides_apart_from_null_ones(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """A campaign stores only the overrides it was given: absent follows the global rule, null means none for this campaign."""
    client = open_client(http_gateway)
    async with client.put(
        "/v1/limits", json={"daily_cap": 5, "quiet_hours": {"start": "21:00", "end": "08:00"}}
    ):
        pass
    limits = Limits.from_json(
        orjson.loads(await pg_pool.fetchval("SELECT rules::text FROM policy"))
    )

    async with client.put("/v1/campaigns/spring", json={"cap": 3}) as response:
        assert response.status == 201
        created = await response.json()
    assert {k: v for k, v in created.items() if k != "counters"} == {"id": "spring", "cap": 3}
    follows = CampaignRules.from_json(await stored_rules(pg_pool, "spring"))
    assert effective_daily_cap(limits, follows) == 5
    assert effective_quiet_hours(limits, follows) == limits.quiet_hours

    async with client.put(
        "/v1/campaigns/spring", json={"cap": 3, "daily_cap": None, "quiet_hours": None}
    ) as response:
        assert response.status == 200
    assert await stored_rules(pg_pool, "spring") == {
        "cap": 3,
        "daily_cap": None,
        "quiet_hours": None,
    }
    overrides = CampaignRules.from_json(await stored_rules(pg_pool, "spring"))
    assert effective_daily_cap(limits, overrides) is None
    assert effective_quiet_hours(limits, overrides) is None

    async with client.put(
        "/v1/campaigns/spring",
        json={"daily_cap": 1, "quiet_hours": {"start": "20:00", "end": "09:30"}},
    ) as response:
        answered = await response.json()
    assert {k: v for k, v in answered.items() if k != "counters"} == {
        "id": "spring",
        "cap": None,
        "daily_cap": 1,
        "quiet_hours": {"start": "20:00", "end": "09:30"},
    }
    async with client.get("/v1/campaigns/spring") as response:
        assert await response.json() == answered


async def stored_rules(pool: asyncpg.Pool, campaign_id: str) -> dict[str, Any]:
    """The campaign's rules as stored in the database."""
    rules: dict[str, Any] = orjson.loads(
        await pool.fetchval("SELECT rules::text FROM campaigns WHERE id = $1", campaign_id)
    )
    return rules


async def test_campaign_counters_count_its_messages_by_status(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """GET /v1/campaigns/{id} counts the campaign's messages that are sent, suppressed, deferred, failed and expired."""
    client = open_client(http_gateway)
    async with client.put("/v1/campaigns/spring", json={"cap": 1}) as response:
        assert (await response.json())["counters"] == dict.fromkeys(
            ("sent", "suppressed", "deferred", "failed", "expired"), 0
        )
    statuses = ["sent"] * 3 + ["suppressed"] * 2 + ["deferred", "failed", "queued"]
    await pg_pool.executemany(
        "INSERT INTO messages (id, channel, kind, status, job, campaign_id)"
        " VALUES ($1, 'email', 'promotional', $2, '{}', $3)",
        [(f"m{i}", s, "spring") for i, s in enumerate(statuses)] + [("other", "sent", "autumn")],
    )
    async with client.get("/v1/campaigns/spring") as response:
        assert response.status == 200
        body = await response.json()
    assert body["counters"] == {
        "sent": 3,
        "suppressed": 2,
        "deferred": 1,
        "failed": 1,
        "expired": 0,
    }


async def test_unknown_campaign_is_answered_404(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """GET of a campaign without rules is answered 404, even when messages name it."""
    await pg_pool.execute(
        "INSERT INTO messages (id, channel, kind, status, job, campaign_id)"
        " VALUES ('m1', 'email', 'promotional', 'sent', '{}', 'ghost')"
    )
    async with open_client(http_gateway).get("/v1/campaigns/ghost") as response:
        assert response.status == 404
        assert await error_of(response) == {
            "code": "not_found",
            "message": "no campaign with this id",
            "details": None,
        }


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/campaigns/spring", {"cap": -1}, "cap"),
        ("/v1/campaigns/spring", {"daily_cap": 1.5}, "daily_cap"),
        ("/v1/campaigns/spring", {"quiet_hours": {"start": "9:00", "end": "10:00"}}, "quiet_hours"),
        ("/v1/campaigns/spring", {"kind": "promotional"}, "kind"),
        (f"/v1/campaigns/{'c' * 129}", {"cap": 1}, "campaign_id"),
    ],
)
async def test_invalid_campaign_is_answered_422_naming_the_field(
    path: str, body: dict[str, Any], field: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Campaign rules that break a rule, or an id over 128 characters, are answered 422 naming the field."""
    async with open_client(http_gateway).put(path, json=body) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:"), error["message"]
