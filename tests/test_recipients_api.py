"""Users, endpoints and opt-outs over HTTP, against a gateway started in process."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from yarl import URL

from gateway.app import Gateway
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

PHONE = "+14155550100"
JANE: dict[str, Any] = {
    "timezone": "America/Los_Angeles",
    "locale": "en-US",
    "attributes": {"first_name": "Jane", "tier": 2, "tags": ["vip"]},
    "endpoints": [
        {"channel": "email", "address": "jane@example.com"},
        {"channel": "sms", "address": PHONE},
        {"channel": "push", "address": "device-token-1", "platform": "apns"},
    ],
}


def endpoint(
    channel: str, address: str, platform: str | None = None, active: bool = True
) -> dict[str, Any]:
    """An endpoint as the API answers it."""
    return {"channel": channel, "address": address, "platform": platform, "active": active}


async def put_user(
    client: Any, user_id: str, body: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    """PUT a user, check the status and return the answer."""
    async with client.put(f"/v1/users/{user_id}", json=body) as response:
        assert response.status == status, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


# -- users -------------------------------------------------------------------------------------


async def test_put_creates_a_user_that_get_returns(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PUT of a new user answers 201 with the stored user, and GET returns the same."""
    client = open_client(http_gateway)
    created = await put_user(client, "jane", JANE)
    assert created["id"] == "jane"
    assert (created["timezone"], created["locale"]) == ("America/Los_Angeles", "en-US")
    assert created["attributes"] == JANE["attributes"]
    assert sorted(created["endpoints"], key=lambda e: e["channel"]) == [
        endpoint("email", "jane@example.com"),
        endpoint("push", "device-token-1", "apns"),
        endpoint("sms", PHONE),
    ]
    assert created["created_at"].endswith("Z")
    async with client.get("/v1/users/jane") as response:
        assert response.status == 200
        assert await response.json() == created


async def test_put_again_replaces_the_user_and_its_endpoint_set(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """A second PUT answers 200 and replaces everything: fields, attributes and endpoints."""
    client = open_client(http_gateway)
    await put_user(client, "jane", JANE)
    replaced = await put_user(
        client,
        "jane",
        {
            "attributes": {"plan": "pro"},
            "endpoints": [{"channel": "sms", "address": PHONE, "active": False}],
        },
        status=200,
    )
    assert (replaced["timezone"], replaced["locale"]) == (None, None)
    assert replaced["attributes"] == {"plan": "pro"}
    assert replaced["endpoints"] == [endpoint("sms", PHONE, active=False)]
    assert await pg_pool.fetchval("SELECT count(*) FROM endpoints WHERE user_id = 'jane'") == 1


async def test_addresses_are_stored_in_their_normal_form(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A phone number is stored in E.164 and an email address with a lower-case domain."""
    body = {
        "endpoints": [
            {"channel": "sms", "address": "+1 (415) 555-0100"},
            {"channel": "email", "address": "Jane@Example.COM"},
            {"channel": "push", "address": "  token-with-spaces-around ", "platform": "fcm"},
        ]
    }
    user = await put_user(open_client(http_gateway), "jane", body)
    assert {(e["channel"], e["address"]) for e in user["endpoints"]} == {
        ("sms", "+14155550100"),
        ("email", "Jane@example.com"),
        ("push", "token-with-spaces-around"),
    }


async def test_locale_is_normalised_and_null_attributes_are_not_stored(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """pt_br is stored as pt-BR, and an attribute given as null is the same as a missing one."""
    user = await put_user(
        open_client(http_gateway), "ana", {"locale": "pt_br", "attributes": {"a": 1, "b": None}}
    )
    assert user["locale"] == "pt-BR"
    assert user["attributes"] == {"a": 1}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone", "unknown time zone"),
        ({"timezone": ""}, "timezone", "unknown time zone"),
        ({"locale": "english"}, "locale", "invalid locale"),
        ({"attributes": {f"k{i}": i for i in range(41)}}, "attributes", "at most 40"),
        ({"attributes": {"k" * 65: 1}}, "attributes", "attribute names"),
        ({"attributes": {"big": "x" * 2000}}, "attributes", "bytes as JSON"),
        ({"attributes": {"nul": "a\u0000b"}}, "attributes", "NUL"),
        (
            {"endpoints": [{"channel": "push", "address": "tok"}]},
            "endpoints.0.platform",
            "needs a platform",
        ),
        (
            {"endpoints": [{"channel": "sms", "address": PHONE, "platform": "fcm"}]},
            "endpoints.0.platform",
            "only push endpoints",
        ),
        (
            {"endpoints": [{"channel": "sms", "address": "4155550100"}]},
            "endpoints.0.address",
            "invalid phone",
        ),
        (
            {"endpoints": [{"channel": "sms", "address": "+1234567"}]},
            "endpoints.0.address",
            "not a valid number",
        ),
        (
            {"endpoints": [{"channel": "email", "address": "jane@"}]},
            "endpoints.0.address",
            "invalid email",
        ),
        (
            {"endpoints": [{"channel": "push", "address": "a b", "platform": "fcm"}]},
            "endpoints.0.address",
            "invalid device token",
        ),
        (
            {"endpoints": [{"channel": "fax", "address": "1"}]},
            "endpoints.0.channel",
            "'email', 'sms' or 'push'",
        ),
        (
            {"endpoints": [{"channel": "sms", "address": PHONE, "active": "yes"}]},
            "endpoints.0.active",
            "boolean",
        ),
        (
            {
                "endpoints": [
                    {"channel": "sms", "address": PHONE},
                    {"channel": "sms", "address": "+1 415 555 0100"},
                ]
            },
            "endpoints",
            "listed twice",
        ),
        ({"id": "someone-else"}, "id", "does not match"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
async def test_invalid_user_is_answered_422_naming_the_field(
    change: dict[str, Any], field: str, words: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A user that breaks a rule is answered 422 invalid_request, the message naming the field, and nothing is stored."""
    client = open_client(http_gateway)
    async with client.put("/v1/users/jane", json={**JANE, **change}) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:"), error["message"]
    assert words in error["message"]
    async with client.get("/v1/users/jane") as response:
        assert response.status == 404


async def test_user_id_over_128_characters_is_refused(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An id from the path longer than 128 characters is answered 422 naming id."""
    async with open_client(http_gateway).put(f"/v1/users/{'u' * 129}", json={}) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith("id:")


@pytest.mark.parametrize("body", [b'{"timezone": ', b"", b"not json"])
async def test_body_that_is_not_json_is_answered_400(
    body: bytes, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A PUT body that is not JSON (or is empty) is answered 400 invalid_json."""
    async with open_client(http_gateway).put("/v1/users/jane", data=body) as response:
        assert response.status == 400
        assert (await error_of(response))["code"] == "invalid_json"


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("PATCH", {}), ("DELETE", None)])
async def test_unknown_user_is_answered_404(
    method: str, body: Any, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET, PATCH and DELETE of a user that does not exist are answered 404 not_found."""
    async with open_client(http_gateway).request(method, "/v1/users/nobody", json=body) as response:
        assert response.status == 404
        assert await error_of(response) == {
            "code": "not_found",
            "message": "no user with this id",
            "details": None,
        }


async def test_patch_merges_attributes_and_adds_or_updates_endpoints(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PATCH merges attributes (null removes one), replaces timezone only when given, and adds or updates endpoints without removing any."""
    client = open_client(http_gateway)
    await put_user(client, "jane", JANE)
    patch = {
        "timezone": None,
        "attributes": {"tier": 3, "tags": None, "city": "Lisbon"},
        "endpoints": [
            {"channel": "sms", "address": "+1 415 555 0100", "active": False},
            {"channel": "email", "address": "jane@work.example.com"},
        ],
    }
    async with client.patch("/v1/users/jane", json=patch) as response:
        assert response.status == 200
        patched = await response.json()
    assert patched["timezone"] is None
    assert patched["locale"] == "en-US"  # not in the patch: kept
    assert patched["attributes"] == {"first_name": "Jane", "tier": 3, "city": "Lisbon"}
    assert sorted(patched["endpoints"], key=lambda e: (e["channel"], e["address"])) == [
        endpoint("email", "jane@example.com"),
        endpoint("email", "jane@work.example.com"),
        endpoint("push", "device-token-1", "apns"),
        endpoint("sms", PHONE, active=False),
    ]
    async with client.get("/v1/users/jane") as response:
        assert await response.json() == patched


async def test_patch_beyond_40_attributes_is_refused_and_changes_nothing(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A PATCH whose merge would leave more than 40 attributes is answered 422 and the user is unchanged."""
    client = open_client(http_gateway)
    before = await put_user(client, "jane", {"attributes": {f"a{i}": i for i in range(30)}})
    patch = {"timezone": "UTC", "attributes": {f"b{i}": i for i in range(11)}}
    async with client.patch("/v1/users/jane", json=patch) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith("attributes:")
    async with client.get("/v1/users/jane") as response:
        assert await response.json() == before


async def test_delete_removes_the_user_and_its_endpoints(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """DELETE answers 204 and removes the user and, by cascade, its endpoints; a second DELETE is 404."""
    client = open_client(http_gateway)
    await put_user(client, "jane", JANE)
    async with client.delete("/v1/users/jane") as response:
        assert response.status == 204
    async with client.get("/v1/users/jane") as response:
        assert response.status == 404
    assert await pg_pool.fetchval("SELECT count(*) FROM endpoints WHERE user_id = 'jane'") == 0
    async with client.delete("/v1/users/jane") as response:
        assert response.status == 404


async def test_users_import_route_is_not_taken_for_a_user_id(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """/v1/users:import is the import route (GET there is 405), while /v1/users/users:import is an ordinary user."""
    client = open_client(http_gateway)
    async with client.get("/v1/users:import") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    await put_user(client, "users:import", {})
    async with client.get("/v1/users/users:import") as response:
        assert (await response.json())["id"] == "users:import"


# -- opt-outs ----------------------------------------------------------------------------------


async def test_opt_out_put_is_idempotent_and_keeps_the_first_entry(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PUT answers 201 with the entry, then 200 with the same entry (source and time unchanged)."""
    client = open_client(http_gateway)
    async with client.put(
        "/v1/opt-outs/email/Jane@Example.COM", json={"source": "unsubscribe"}
    ) as response:
        assert response.status == 201
        first = await response.json()
    # Opt-outs keep email addresses wholly in lower case: Jane@ and jane@ are one person.
    assert (first["channel"], first["address"], first["source"]) == (
        "email",
        "jane@example.com",
        "unsubscribe",
    )
    assert first["created_at"].endswith("Z")
    async with client.put(
        "/v1/opt-outs/email/Jane@example.com", json={"source": "bounce"}
    ) as response:
        assert response.status == 200
        assert await response.json() == first
    async with client.get("/v1/opt-outs/email/Jane@EXAMPLE.com") as response:
        assert response.status == 200
        assert await response.json() == first


async def test_opt_out_without_a_body_has_source_api(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PUT with no body records the source api."""
    async with open_client(http_gateway).put("/v1/opt-outs/push/token-1") as response:
        assert response.status == 201
        assert (await response.json())["source"] == "api"


@pytest.mark.parametrize(
    "path_address", ["%2B1%20(415)%20555-0100", "%2B14155550100", "+14155550100"]
)
async def test_phone_number_in_the_path_may_be_url_encoded(
    path_address: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A phone number in the path, with its + encoded as %2B or not, is the same normalised address."""
    client = open_client(http_gateway)
    url = URL(f"http://127.0.0.1:{http_gateway.port}/v1/opt-outs/sms/{path_address}", encoded=True)
    async with client.put(url, json={"source": "keyword"}) as response:
        assert response.status == 201
        assert (await response.json())["address"] == PHONE
    async with client.get(url) as response:
        assert (await response.json())["address"] == PHONE


async def test_opt_out_delete_answers_204_then_404(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """DELETE of an opt-out answers 204, after which GET and DELETE are 404."""
    client = open_client(http_gateway)
    async with client.put(f"/v1/opt-outs/sms/{PHONE}") as response:
        assert response.status == 201
    async with client.delete(f"/v1/opt-outs/sms/{PHONE}") as response:
        assert response.status == 204
    for method in ("GET", "DELETE"):
        async with client.request(method, f"/v1/opt-outs/sms/{PHONE}") as response:
            assert response.status == 404
            assert (await error_of(response))["code"] == "not_found"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/opt-outs/fax/123", None, "channel"),
        ("/v1/opt-outs/sms/4155550100", None, "address"),
        ("/v1/opt-outs/email/not-an-address", None, "address"),
        ("/v1/opt-outs/sms/+14155550100", {"source": "carrier-pigeon"}, "source"),
        ("/v1/opt-outs/sms/+14155550100", {"reason": "x"}, "reason"),
    ],
)
async def test_invalid_opt_out_is_answered_422_naming_the_field(
    path: str, body: Any, field: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An unknown channel, an invalid address or an unknown source is answered 422 naming it."""
    async with open_client(http_gateway).put(path, json=body) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}:")


async def list_all(client: Any, query: str) -> list[list[dict[str, Any]]]:
    """Follow next_cursor from the first page to the last; the pages."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        params = query + (f"&cursor={cursor}" if cursor else "")
        async with client.get(f"/v1/opt-outs?{params}") as response:
            assert response.status == 200
            body = await response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20, "pagination does not end"


async def test_opt_out_list_pages_through_every_entry_once(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """250 opt-outs, most sharing one created_at, come in 3 pages of 100, 100 and 50 in key order, without duplicates or gaps."""
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, source, created_at)"
        " SELECT CASE WHEN n % 2 = 0 THEN 'email' ELSE 'sms' END, 'a' || n || '@example.com',"
        "        'api', CASE WHEN n < 200 THEN '2026-01-01T00:00:00Z'::timestamptz"
        "                    ELSE '2026-01-01T00:00:00Z'::timestamptz + n * interval '1 ms' END"
        " FROM generate_series(1, 250) AS n"
    )
    pages = await list_all(open_client(http_gateway), "limit=100")
    assert [len(p) for p in pages] == [100, 100, 50]
    entries = [e for page in pages for e in page]
    keys = [(e["created_at"], e["channel"], e["address"]) for e in entries]
    assert len(set(keys)) == 250
    assert keys == sorted(keys)
    assert set(entries[0]) == {"channel", "address", "source", "created_at"}


async def test_opt_out_list_filters_by_channel(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """With channel=sms only SMS opt-outs are listed, all of them across pages; the default page is 100."""
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, source)"
        " SELECT CASE WHEN n % 3 = 0 THEN 'sms' ELSE 'email' END, 'x' || n, 'bounce'"
        " FROM generate_series(1, 330) AS n"
    )
    client = open_client(http_gateway)
    pages = await list_all(client, "channel=sms&limit=40")
    assert [len(p) for p in pages] == [40, 40, 30]
    assert {e["channel"] for p in pages for e in p} == {"sms"}
    assert len({e["address"] for p in pages for e in p}) == 110
    default = await list_all(client, "channel=email")
    assert [len(p) for p in default] == [100, 100, 20]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=bm9wZQ", "cursor"),
        ("channel=fax", "channel"),
    ],
)
async def test_invalid_list_query_is_answered_422(
    query: str, field: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A limit outside 1-1000, a cursor this API did not make or an unknown channel is answered 422 naming it."""
    async with open_client(http_gateway).get(f"/v1/opt-outs?{query}") as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith(f"{field}:")


async def test_an_address_with_a_slash_is_sent_encoded(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An email address holding a '/' (sent as %2F) is one path segment and stored decoded."""
    client = open_client(http_gateway)
    url = URL(
        f"http://127.0.0.1:{http_gateway.port}/v1/opt-outs/email/a%2Fb@Example.com", encoded=True
    )
    async with client.put(url) as response:
        assert response.status == 201
        assert (await response.json())["address"] == "a/b@example.com"
