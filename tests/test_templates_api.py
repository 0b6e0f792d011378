"""Stored templates over HTTP and their batch loading, against a gateway started in process."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway.app import Gateway
from gateway.templates import TemplateCache, load_many, not_found_reason
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

WELCOME = {
    "email": {
        "subject": "Welcome, {{ user.first_name }}",
        "html": "<p>Hi {{ user.first_name }}</p>",
    },
    "sms": {"body": "Hi {{ user.first_name }}, your code is {{ code }}"},
    "push": {"title": "Hi {{ user.first_name }}", "data": {"code": "{{ code }}"}},
    "locales": {
        "pt": {"sms": {"body": "Olá {{ user.first_name }}, o seu código é {{ code }}"}},
        "pt-BR": {"sms": {"body": "Oi {{ user.first_name }}, seu código é {{ code }}"}},
    },
    "defaults": {"user": {"first_name": "there"}},
}


async def put(client: Any, name: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with client.put(f"/v1/templates/{name}", json=body) as response:
        return response.status, await response.json()


async def preview(client: Any, name: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with client.post(f"/v1/templates/{name}/render", json=request) as response:
        return response.status, await response.json()


async def test_put_creates_versions_only_when_the_body_changes(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """The first PUT is version 1 (201); the same body again, keys reordered, is 200 with version 1; a new body is version 2."""
    client = open_client(http_gateway)
    status, first = await put(client, "welcome", WELCOME)
    assert (status, first["name"], first["version"]) == (201, "welcome", 1)
    assert first["body"] == WELCOME
    reordered = dict(reversed(list(WELCOME.items())))
    status, again = await put(client, "welcome", reordered)
    assert (status, again["version"], again["created_at"]) == (200, 1, first["created_at"])
    status, second = await put(client, "welcome", {"sms": {"body": "v2"}})
    assert (status, second["version"]) == (201, 2)
    async with client.get("/v1/templates/welcome") as response:
        latest = await response.json()
    assert (latest["version"], latest["body"]) == (2, {"sms": {"body": "v2"}})


async def test_concurrent_puts_number_versions_without_gaps_or_clashes(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Eight different bodies PUT at once become versions 1 to 8, one each."""
    client = open_client(http_gateway)
    answers = await asyncio.gather(
        *(put(client, "busy", {"sms": {"body": f"body {n}"}}) for n in range(8))
    )
    assert sorted(answer["version"] for _, answer in answers) == list(range(1, 9))
    assert {status for status, _ in answers} == {201}


async def test_a_pinned_version_still_loads_after_newer_ones(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET ?version=1 answers version 1 after version 2 exists; an unknown version is 404."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    await put(client, "welcome", {"sms": {"body": "v2"}})
    async with client.get("/v1/templates/welcome", params={"version": "1"}) as response:
        assert response.status == 200
        pinned = await response.json()
    assert (pinned["version"], pinned["body"]) == (1, WELCOME)
    async with client.get("/v1/templates/welcome", params={"version": "9"}) as response:
        assert response.status == 404
        assert (await error_of(response))["message"] == "template 'welcome' has no version 9"
    async with client.get("/v1/templates/welcome", params={"version": "0"}) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith("version:")


async def test_the_list_shows_latest_versions_and_hides_deleted_names(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET /v1/templates lists each name that is not deleted with its latest version and updated_at, by name."""
    client = open_client(http_gateway)
    await put(client, "b-receipt", {"sms": {"body": "1"}})
    await put(client, "b-receipt", {"sms": {"body": "2"}})
    await put(client, "a.welcome", WELCOME)
    await put(client, "c_gone", WELCOME)
    async with client.delete("/v1/templates/c_gone") as response:
        assert response.status == 204
    async with client.get("/v1/templates") as response:
        items = (await response.json())["items"]
    assert [(i["name"], i["version"]) for i in items] == [("a.welcome", 1), ("b-receipt", 2)]
    assert all(i["updated_at"].endswith("Z") for i in items)


async def test_soft_delete_keeps_pinned_versions_and_a_put_restores_the_name(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """After DELETE the name stops resolving (GET, preview) but version 1 still loads; a later PUT restores it as version 2."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    async with client.delete("/v1/templates/welcome") as response:
        assert response.status == 204
    async with client.delete("/v1/templates/welcome") as response:
        assert response.status == 404
    async with client.get("/v1/templates/welcome") as response:
        assert response.status == 404
        assert (await error_of(response))["message"] == "unknown template 'welcome'"
    status, _ = await preview(client, "welcome", {"channel": "sms", "data": {"code": 1}})
    assert status == 404
    async with client.get("/v1/templates/welcome?version=1") as response:
        assert (response.status, (await response.json())["version"]) == (200, 1)
    status, pinned = await preview(
        client, "welcome", {"channel": "sms", "data": {"code": 1}, "version": 1}
    )
    assert (status, pinned["version"]) == (200, 1)
    status, restored = await put(client, "welcome", WELCOME)
    assert (status, restored["version"]) == (201, 2)
    async with client.get("/v1/templates/welcome") as response:
        assert (await response.json())["version"] == 2


async def test_preview_email_escapes_html_only_and_derives_the_text(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An email preview escapes markup in html only, and derives the text from the html when the template has none."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    status, answer = await preview(
        client, "welcome", {"channel": "email", "user": {"first_name": "<Jo>"}}
    )
    assert status == 200
    assert answer == {
        "name": "welcome",
        "version": 1,
        "channel": "email",
        "locale": None,
        "parts": {
            "subject": "Welcome, <Jo>",
            "html": "<p>Hi &lt;Jo&gt;</p>",
            "text": "Hi <Jo>\n",
        },
    }


@pytest.mark.parametrize(
    ("code", "encoding", "segments"),
    [("1234", "GSM-7", 1), ("x" * 140, "GSM-7", 2), ("😀", "UCS-2", 1), ("ж" * 60, "UCS-2", 2)],
)
async def test_preview_sms_gives_encoding_and_segments(
    code: str, encoding: str, segments: int, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An SMS preview answers the rendered body with its encoding and segment count."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    status, answer = await preview(client, "welcome", {"channel": "sms", "data": {"code": code}})
    assert status == 200
    assert answer["parts"] == {"body": f"Hi there, your code is {code}"}
    assert (answer["encoding"], answer["segments"]) == (encoding, segments)


async def test_preview_push_keeps_data_values_strings(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A push preview renders the title and each data value as a string."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    status, answer = await preview(client, "welcome", {"channel": "push", "data": {"code": 42}})
    assert status == 200
    assert answer["parts"] == {
        "title": "Hi there",
        "body": None,
        "data": {"code": "42"},
        "silent": False,
    }
    assert "segments" not in answer


@pytest.mark.parametrize(
    ("locale", "chosen", "greeting"),
    [("pt-BR", "pt-BR", "Oi"), ("pt-PT", "pt", "Olá"), ("pt", "pt", "Olá"), ("fr", None, "Hi")],
)
async def test_preview_locale_falls_back_from_region_to_language_to_default(
    locale: str, chosen: str | None, greeting: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """pt-BR uses pt-BR; pt-PT falls back to pt; an unknown locale falls back to the default parts."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    status, answer = await preview(
        client, "welcome", {"channel": "sms", "locale": locale, "data": {"code": 7}}
    )
    assert (status, answer["locale"]) == (200, chosen)
    assert answer["parts"]["body"].startswith(f"{greeting} there")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"email": {"subject": "ok", "html": "<p>\n<b>\n{{ name }</b>"}},
            "email.html line 3: unexpected '}'",
        ),
        (
            {"sms": {"body": "ok"}, "locales": {"pt-BR": {"sms": {"body": "{% for %}"}}}},
            "locales.pt-BR.sms.body line 1: ",
        ),
        ({"email": {"subject": "no body"}}, "email: email needs html or text"),
        ({"sms": {"body": "x"}, "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"sms": {"body": "\u0000"}}, "body: NUL characters"),
    ],
)
async def test_invalid_bodies_are_answered_422_naming_the_part(
    body: dict[str, Any], message: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A body with a Jinja syntax error or a shape error is 422 invalid_request naming the part (and the line); nothing is stored."""
    client = open_client(http_gateway)
    async with client.put("/v1/templates/broken", json=body) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(message), error["message"]
    async with client.get("/v1/templates/broken") as response:
        assert response.status == 404


@pytest.mark.parametrize("name", ["a" * 201, "with space", "ünï", "semi;colon"])
async def test_invalid_names_are_refused(
    name: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A name that is not 1-200 letters, digits, '.', '_' or '-' is 422 at PUT."""
    client = open_client(http_gateway)
    async with client.put(f"/v1/templates/{name}", json=WELCOME) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith("name:")


async def test_preview_of_a_missing_variable_is_422_naming_it(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A preview whose data lacks a variable is 422 render_failed naming the template, version, part and variable."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    async with client.post("/v1/templates/welcome/render", json={"channel": "sms"}) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "render_failed"
    assert error["message"] == "template 'welcome' v1 sms.body: 'code' is undefined"


async def test_preview_refuses_a_sandbox_escape(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A template reaching for ''.__class__ is stored (it compiles) but its preview is refused by the sandbox."""
    client = open_client(http_gateway)
    status, _ = await put(client, "escape", {"sms": {"body": "{{ ''.__class__.__mro__ }}"}})
    assert status == 201
    async with client.post("/v1/templates/escape/render", json={"channel": "sms"}) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["message"].startswith(
        "template 'escape' v1 sms.body: refused: access to attribute"
    )
    assert "object" in error["message"] and "<class" not in error["message"]


async def test_preview_of_nested_loops_is_refused_by_the_render_budget(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A preview of loops nested 10,000 x 1,000 deep is 422 within the step budget, not run in the API's event loop."""
    client = open_client(http_gateway)
    loops = "{% for a in range(10000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"
    assert (await put(client, "loops", {"sms": {"body": loops}}))[0] == 201
    status, answer = await asyncio.wait_for(preview(client, "loops", {"channel": "sms"}), 5)
    assert status == 422
    assert answer["error"]["message"] == (
        "template 'loops' v1 sms.body: refused: a template may not take more than 100000 steps"
        " (loop iterations and macro calls)"
    )


async def test_preview_of_a_channel_the_template_lacks_is_422(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Previewing a channel the template has no parts for is 422 render_failed."""
    client = open_client(http_gateway)
    await put(client, "sms-only", {"sms": {"body": "hi"}})
    status, answer = await preview(client, "sms-only", {"channel": "email"})
    assert status == 422
    assert answer["error"]["message"] == "template 'sms-only' v1 has no email content"


async def test_template_routes_need_the_bearer_token(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """Every template route is 401 without the bearer token."""
    client = open_client(http_gateway, token=None)
    for method, path in [
        ("GET", "/v1/templates"),
        ("PUT", "/v1/templates/x"),
        ("GET", "/v1/templates/x"),
        ("DELETE", "/v1/templates/x"),
        ("POST", "/v1/templates/x/render"),
    ]:
        async with client.request(method, path, json={}) as response:
            assert response.status == 401, (method, path)


async def test_load_many_reads_a_batch_in_one_go_and_caches_versions(
    http_gateway: Gateway, open_client: OpenClient, pg_pool: asyncpg.Pool
) -> None:
    """load_many reads the versions asked for in one go (a deleted template's included), leaves
    out those that do not exist, and serves cached versions without the database."""
    client = open_client(http_gateway)
    await put(client, "welcome", WELCOME)
    await put(client, "welcome", {"sms": {"body": "v2"}})
    await put(client, "gone", {"sms": {"body": "bye"}})
    async with client.delete("/v1/templates/gone"):
        pass
    cache = TemplateCache()
    wanted = {("welcome", 1), ("welcome", 2), ("welcome", 7), ("gone", 1), ("nobody", 1)}
    found = await load_many(pg_pool, wanted, cache=cache)
    assert sorted(found) == [("gone", 1), ("welcome", 1), ("welcome", 2)]
    assert all(found[k].key == k for k in found)
    assert found[("welcome", 1)].body.model_dump(mode="json", exclude_none=True) == WELCOME
    assert found[("gone", 1)].body.sms is not None and found[("gone", 1)].body.sms.body == "bye"
    assert [not_found_reason(k) for k in sorted(wanted - found.keys())] == [
        "template 'nobody' has no version 1",
        "template 'welcome' has no version 7",
    ]
    assert len(cache) == 3
    # Versions in the cache need no database at all: the same objects come back.
    no_pool: Any = None
    again = await load_many(no_pool, {("welcome", 1), ("gone", 1)}, cache=cache)
    assert again[("welcome", 1)] is found[("welcome", 1)]
    assert again[("gone", 1)] is found[("gone", 1)]
    assert not_found_reason(("nobody", None)) == "unknown template 'nobody'"
