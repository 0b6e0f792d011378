"""Our dedicated numbers over HTTP (/v1/numbers), against a gateway started in process."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from gateway.app import Gateway
from gateway.numbers import DEFAULT_HELP_TEXT, DEFAULT_START_TEXT, DEFAULT_STOP_TEXT
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

NUMBER = "+14155550199"
CONFIG: dict[str, Any] = {
    "help_text": "Acme: reply STOP to stop.",
    "stop_text": "Acme: you will get no more messages.",
    "start_text": "Acme: welcome back.",
    "keywords": {"HOURS": "We are open 9-5"},
    "forward": False,
    "opt_out_scope": "number",
}


async def put_number(
    client: Any, number: str, body: dict[str, Any] | None, status: int = 201
) -> dict[str, Any]:
    """PUT a number's configuration, check the status and return the answer."""
    async with client.put(f"/v1/numbers/{number}", json=body) as response:
        assert response.status == status, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def test_put_without_a_body_registers_the_defaults(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PUT with no body answers 201 with the carrier-style default texts, forward on, scope all."""
    client = open_client(http_gateway)
    entry = await put_number(client, NUMBER, None)
    assert {k: v for k, v in entry.items() if not k.endswith("_at")} == {
        "number": NUMBER,
        "help_text": DEFAULT_HELP_TEXT,
        "stop_text": DEFAULT_STOP_TEXT,
        "start_text": DEFAULT_START_TEXT,
        "keywords": {},
        "forward": True,
        "opt_out_scope": "all",
    }
    assert entry["created_at"].endswith("Z")
    async with client.get(f"/v1/numbers/{NUMBER}") as response:
        assert response.status == 200
        assert await response.json() == entry


async def test_put_again_replaces_the_whole_configuration(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A second PUT answers 200 and replaces every field; omitted ones go back to defaults."""
    client = open_client(http_gateway)
    await put_number(client, NUMBER, CONFIG)
    replaced = await put_number(client, NUMBER, CONFIG, status=200)
    assert {k: replaced[k] for k in CONFIG} == CONFIG
    again = await put_number(client, NUMBER, {"forward": False}, status=200)
    assert (again["stop_text"], again["keywords"], again["opt_out_scope"]) == (
        DEFAULT_STOP_TEXT, {}, "all",
    )


@pytest.mark.parametrize(
    "path_number", ["%2B14155550199", "+14155550199", "%2B1%20415%20555%200199"]
)
async def test_the_number_in_the_path_may_be_url_encoded(
    path_number: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """The + of the number may be sent as is or as %2B; any accepted spelling is stored in E.164."""
    client = open_client(http_gateway)
    url = URL(f"http://127.0.0.1:{http_gateway.port}/v1/numbers/{path_number}", encoded=True)
    async with client.put(url, json=CONFIG) as response:
        assert response.status == 201
        assert (await response.json())["number"] == NUMBER
    async with client.get(f"/v1/numbers/{NUMBER}") as response:
        assert response.status == 200


async def test_delete_answers_204_then_404(http_gateway: Gateway, open_client: OpenClient) -> None:
    """DELETE forgets the number: 204, after which GET and DELETE answer 404."""
    client = open_client(http_gateway)
    await put_number(client, NUMBER, None)
    async with client.delete(f"/v1/numbers/{NUMBER}") as response:
        assert response.status == 204
    for method in ("GET", "DELETE"):
        async with client.request(method, f"/v1/numbers/{NUMBER}") as response:
            assert response.status == 404
            assert (await error_of(response))["code"] == "not_found"


async def test_list_pages_through_numbers_in_order(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET /v1/numbers pages through every number in order with an opaque cursor."""
    client = open_client(http_gateway)
    numbers = ["+14155550103", "+14155550101", "+447911123456", "+14155550102"]
    for number in numbers:
        await put_number(client, number, None)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        async with client.get("/v1/numbers", params=params) as response:
            assert response.status == 200
            page = await response.json()
        seen += [item["number"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(numbers)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/numbers/4155550199", None, "number"),
        ("/v1/numbers/ACME", None, "number"),
        (f"/v1/numbers/{NUMBER}", {"opt_out_scope": "everything"}, "opt_out_scope"),
        (f"/v1/numbers/{NUMBER}", {"forward": "yes"}, "forward"),
        (f"/v1/numbers/{NUMBER}", {"help_text": ""}, "help_text"),
        (f"/v1/numbers/{NUMBER}", {"stop_text": "x" * 1601}, "stop_text"),
        (f"/v1/numbers/{NUMBER}", {"keywords": {"Stop!": "no"}}, "keywords"),
        (f"/v1/numbers/{NUMBER}", {"keywords": {"...": "no"}}, "keywords"),
        (f"/v1/numbers/{NUMBER}", {"keywords": {"Hours": "a", "HOURS!": "b"}}, "keywords"),
        (f"/v1/numbers/{NUMBER}", {"keywords": {"HOURS": ""}}, "keywords"),
        (f"/v1/numbers/{NUMBER}", {"colour": "blue"}, "colour"),
    ],
)
async def test_invalid_input_is_refused_naming_the_field(
    path: str, body: dict[str, Any] | None, field: str, http_gateway: Gateway,
    open_client: OpenClient,
) -> None:
    """A bad number, scope, flag, text or keyword answers 422 naming the field."""
    client = open_client(http_gateway)
    async with client.put(path, json=body) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field)


async def test_bad_cursor_and_limit_are_refused(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A cursor this API did not return, or a limit out of range, answers 422."""
    client = open_client(http_gateway)
    for params in ({"cursor": "not-a-cursor"}, {"limit": "0"}, {"limit": "1001"}):
        async with client.get("/v1/numbers", params=params) as response:
            assert response.status == 422, params


async def test_numbers_need_the_bearer_token(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Without the API token every /v1/numbers route answers 401."""
    client = open_client(http_gateway, token=None)
    for method, path in (("GET", "/v1/numbers"), ("PUT", f"/v1/numbers/{NUMBER}"),
                         ("GET", f"/v1/numbers/{NUMBER}"), ("DELETE", f"/v1/numbers/{NUMBER}")):
        async with client.request(method, path) as response:
            assert response.status == 401
