"""The shared HTTP helper: Retry-After, refused statuses, form bodies, its caches, the client."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from string import ascii_letters
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web

from hypothesis import given
from hypothesis import strategies as st

from adapters.errors import PermanentSendError, TransientSendError
from adapters.http import (
    HttpClient,
    HttpResponse,
    classify_status,
    encode_form,
    parse_retry_after,
)

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


# --- form bodies --------------------------------------------------------------------------------

RESERVED = "a&b=c+d %20 ü 😀\n/?#[]@!$'()*,;~._-"


def test_encode_form_escapes_reserved_and_non_ascii_characters_in_order() -> None:
    """Fields keep their order; reserved characters are escaped and text is UTF-8, spaces as +."""
    body = encode_form((("To", "+1 555"), ("Body", RESERVED), ("Empty", "")))
    assert body == (
        b"To=%2B1+555&Body=a%26b%3Dc%2Bd+%2520+%C3%BC+%F0%9F%98%80%0A%2F%3F%23%5B%5D%40%21%24"
        b"%27%28%29%2A%2C%3B~._-&Empty="
    )
    assert parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True) == [
        ("To", "+1 555"), ("Body", RESERVED), ("Empty", ""),
    ]


@given(st.lists(st.tuples(st.text(ascii_letters, min_size=1, max_size=8), st.text(max_size=40)),
                max_size=6))
def test_encode_form_is_what_aiohttp_formdata_sends(fields: list[tuple[str, str]]) -> None:
    """The bytes are those aiohttp's FormData would have sent, and decode back to the fields."""
    body = encode_form(fields)
    if fields:  # an empty FormData is sent as multipart, not as a form
        assert body.decode("ascii") == aiohttp.FormData(fields)().decode()
    assert parse_qsl(body.decode("ascii"), keep_blank_values=True) == fields


# --- caches and the response ------------------------------------------------------------------


def test_response_text_is_decoded_from_content_on_first_read() -> None:
    """text decodes the raw body as UTF-8 with bad bytes replaced; a given text is kept."""
    lazy = HttpResponse(status=400, headers={}, json=None, retry_after=None,
                        content="café".encode() + b"\xff")
    assert lazy.text == "café\ufffd"
    assert lazy.text is lazy.text
    assert HttpResponse(status=400, headers={}, json=None, retry_after=None, text="t").text == "t"


# --- the client against a local echo server ----------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    answer = {"path": request.raw_path, "body": (await request.read()).decode(),
              "content_type": request.headers.get("Content-Type"),
              "authorization": request.headers.get("Authorization")}
    status = int(request.query.get("status", "200"))
    retry_after = request.query.get("retry_after")
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return web.json_response(answer, status=status, headers=headers)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A local server answering any POST with what it received, as JSON."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", _echo)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    """An HttpClient with short timeouts, closed after the test."""
    http = HttpClient(name="echo", connect_timeout=2, read_timeout=2)
    yield http
    await http.close()


async def test_form_data_is_sent_url_encoded_as_a_form(echo_url: str, client: HttpClient) -> None:
    """Fields and pre-encoded bytes both go as application/x-www-form-urlencoded."""
    fields = {"Body": RESERVED, "To": "+1"}
    by_fields = await client.request("POST", f"{echo_url}/f", data=fields)
    by_bytes = await client.request("POST", f"{echo_url}/b", data=encode_form(fields))
    for response in (by_fields, by_bytes):
        assert response.json["content_type"] == "application/x-www-form-urlencoded"
        assert parse_qsl(response.json["body"]) == list(fields.items())
        assert response.retry_after is None


async def test_a_content_type_header_wins_and_data_with_json_is_refused(
    echo_url: str, client: HttpClient
) -> None:
    """A caller's Content-Type (any case) is sent as given; data and json together are an error."""
    response = await client.request("POST", echo_url, json={"a": 1},
                                    headers={"content-type": "application/vnd.x+json"})
    assert response.json["content_type"] == "application/vnd.x+json"
    assert response.json["body"] == '{"a":1}'
    with pytest.raises(ValueError):
        await client.request("POST", echo_url, data={"a": "1"}, json={"a": 1})


async def test_each_credential_gets_its_own_authorization(
    echo_url: str, client: HttpClient
) -> None:
    """Cached header sets are per credential: alternating users never swap Authorization."""
    for user in ("alice", "bob", "alice", "bob"):
        response = await client.request("POST", echo_url, data={"x": "1"},
                                        basic_auth=(user, "pässword"))
        expected = base64.b64encode(f"{user}:pässword".encode()).decode()
        assert response.json["authorization"] == f"Basic {expected}"
    response = await client.request("POST", echo_url, data={"x": "1"},
                                    headers={"X-Trace": "1"}, basic_auth=("carol", "pw"))
    assert response.json["authorization"] == "Basic " + base64.b64encode(b"carol:pw").decode()
    assert (await client.request("POST", echo_url)).json["authorization"] is None


async def test_urls_are_sent_as_aiohttp_sends_the_string(echo_url: str) -> None:
    """Each URL, escapes and query included, reaches the server as a plain aiohttp session
    sends it."""
    small = HttpClient(name="echo", connect_timeout=2, read_timeout=2)
    try:
        async with aiohttp.ClientSession() as plain:
            for n in [0, 1, 2, 3, 4, 5, 6, 7, 0, 7]:
                url = f"{echo_url}/n/{n}/%7E?q=é&r=a%2Fb c"
                async with plain.post(url) as direct:
                    expected = (await direct.json())["path"]
                response = await small.request("POST", url)
                assert response.json["path"] == expected
    finally:
        await small.close()


async def test_a_refusal_still_parses_retry_after(echo_url: str, client: HttpClient) -> None:
    """A refused response carries its Retry-After into the error; its body is described."""
    with pytest.raises(TransientSendError, match="echo answered HTTP 503") as caught:
        await client.request("POST", f"{echo_url}/x?status=503&retry_after=7")
    assert caught.value.retry_after == 7.0


async def test_an_invalid_url_is_a_transient_error(client: HttpClient) -> None:
    """A URL that does not parse, or is not http(s), gives TransientSendError, as it did from
    aiohttp."""
    with pytest.raises(TransientSendError, match="invalid URL"):
        await client.request("POST", "http://[::1")
    with pytest.raises(TransientSendError, match="invalid URL"):
        await client.request("POST", "ftp://127.0.0.1/x")
