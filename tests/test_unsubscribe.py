"""One-click unsubscribe (RFC 8058): signed tokens, the headers, and the endpoint without a bearer token."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from gateway.app import Gateway
from gateway.settings import Settings
from gateway.unsubscribe import (
    list_unsubscribe_headers,
    unsubscribe_headers,
    unsubscribe_token,
    verify_token,
)
from tests.conftest import Amqp
from tests.test_api import OpenClient, error_of, open_client

__all__ = ["open_client"]  # fixture used here, defined with the API tests

SECRET = "unsubscribe-secret-" + "s" * 16
PUBLIC_URL = "https://gateway.example.com"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def tamper(token: str) -> str:
    """The token with its payload's address changed and the mac kept."""
    payload, mac = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).replace(b"jane", b"joan")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


# -- tokens and headers (pure) -----------------------------------------------------------------


def test_a_token_verifies_to_its_channel_and_lower_cased_address() -> None:
    """A token made with the secret verifies to ("email", the address in lower case), given as str or SecretStr."""
    token = unsubscribe_token(SECRET, "Jane@Example.COM")
    assert verify_token(SECRET, token) == ("email", "jane@example.com")
    assert verify_token(SecretStr(SECRET), token) == ("email", "jane@example.com")
    assert set(token) <= set(B64 + ".")


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: tamper(t),
        lambda t: t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:],
        lambda t: t[:-1] + B64[B64.index(t[-1]) ^ 1],  # only an unused low bit of the mac
        lambda t: t + "=",
        lambda t: unsubscribe_token("another-secret-of-16+", "jane@example.com"),
        lambda t: t.split(".")[0],
        lambda t: t + ".x",
        lambda t: "!!!." + t.split(".")[1],
        lambda t: "",
    ],
)
def test_forged_or_tampered_tokens_do_not_verify(forge: Callable[[str], str]) -> None:
    """A changed address, a changed mac, another secret or a malformed token verifies to None."""
    assert verify_token(SECRET, forge(unsubscribe_token(SECRET, "jane@example.com"))) is None


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies(text: str) -> None:
    """No string that the secret did not sign verifies."""
    assert verify_token(SECRET, text) is None


@given(st.emails())
def test_every_address_round_trips(address: str) -> None:
    """Any address comes back from its token, lower-cased."""
    assert verify_token(SECRET, unsubscribe_token(SECRET, address)) == ("email", address.lower())


def test_headers_carry_the_https_link_the_mailto_and_the_one_click_post() -> None:
    """List-Unsubscribe holds the signed link then the mailto; List-Unsubscribe-Post is the one-click value."""
    headers = list_unsubscribe_headers(
        PUBLIC_URL + "/", "jane@example.com", SECRET, "unsub@example.com"
    )
    token = unsubscribe_token(SECRET, "jane@example.com")
    assert headers == {
        "List-Unsubscribe": f"<{PUBLIC_URL}/v1/unsubscribe/{token}>, <mailto:unsub@example.com>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    without_mailto = list_unsubscribe_headers(PUBLIC_URL, "jane@example.com", SECRET, None)
    assert without_mailto["List-Unsubscribe"] == f"<{PUBLIC_URL}/v1/unsubscribe/{token}>"


def test_no_headers_unless_the_secret_and_the_public_url_are_set() -> None:
    """unsubscribe_headers answers nothing when GATEWAY_UNSUBSCRIBE_SECRET or GATEWAY_PUBLIC_URL is unset."""
    secret = SecretStr(SECRET)
    assert unsubscribe_headers(Settings(public_url=PUBLIC_URL), "jane@example.com") == {}
    assert unsubscribe_headers(Settings(unsubscribe_secret=secret), "jane@example.com") == {}
    both = Settings(public_url=PUBLIC_URL, unsubscribe_secret=secret)
    assert set(unsubscribe_headers(both, "jane@example.com")) == {
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    }


# -- the endpoint ------------------------------------------------------------------------------


@pytest.fixture
async def unsubscribe_gateway(amqp: Amqp, settings_for: Any, start_gateway: Any) -> Gateway:
    """An HTTP-only gateway with an unsubscribe secret, on clean tables."""
    settings = settings_for(unsubscribe_secret=SECRET, public_url=PUBLIC_URL)
    gateway: Gateway = await start_gateway(settings, consume=False, http=True)
    return gateway


async def opt_out_of(client: Any, address: str) -> dict[str, Any] | None:
    async with client.get(f"/v1/opt-outs/email/{address}") as response:
        return await response.json() if response.status == 200 else None


async def test_one_click_post_opts_the_address_out_without_a_bearer_token(
    unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """POST List-Unsubscribe=One-Click to the link, with no token, answers 200 text/plain and opts the address out with source unsubscribe."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    token = unsubscribe_token(SECRET, "Jane@Example.com")
    async with anonymous.post(
        f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}, allow_redirects=False
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert "unsubscribed" in await response.text()
    entry = await opt_out_of(open_client(unsubscribe_gateway), "jane@example.com")
    assert entry is not None
    assert (entry["channel"], entry["address"], entry["source"]) == (
        "email",
        "jane@example.com",
        "unsubscribe",
    )
    # A second click is as good as the first.
    async with anonymous.post(
        f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
    ) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (aiohttp.FormData({"List-Unsubscribe": "One-Click"}, default_to_multipart=True), None),
        (b"List-Unsubscribe=One-Click", None),  # no Content-Type: read as URL-encoded
        (b"List-Unsubscribe=One-Click&utm_source=gmail", "application/x-www-form-urlencoded"),
    ],
    ids=["multipart", "no content type", "with another field"],
)
async def test_the_one_click_field_is_read_from_either_form_encoding(
    body: Any, content_type: str | None, unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """The one-click field opts the address out sent as multipart/form-data, as a URL-encoded form, or as a bare body in that form."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    token = unsubscribe_token(SECRET, "jane@example.com")
    headers = {"Content-Type": content_type} if content_type else {}
    async with anonymous.post(f"/v1/unsubscribe/{token}", data=body, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert await opt_out_of(open_client(unsubscribe_gateway), "jane@example.com") is not None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (None, None),
        ({"List-Unsubscribe": "Yes"}, None),
        ({"List-Unsubscribe": "one-click"}, None),
        ({"Unsubscribe": "One-Click"}, None),
        (aiohttp.FormData({"List-Unsubscribe": "Yes"}, default_to_multipart=True), None),
        (b"List-Unsubscribe=One-Click\xff\xfe", None),
        (b"List-Unsubscribe=One-Click", "multipart/form-data"),  # no boundary
        (b"--zzz\r\nbroken header\r\n\r\nOne-Click\r\n--zzz--\r\n",
         "multipart/form-data; boundary=zzz"),
    ],
    ids=["no body", "another value", "lower case", "another field", "multipart, another value",
         "not UTF-8", "multipart without a boundary", "broken multipart"],
)
async def test_a_post_without_the_one_click_field_is_400_and_opts_nobody_out(
    body: Any, content_type: str | None, unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """A POST whose body lacks List-Unsubscribe=One-Click (RFC 8058 requires it), or cannot be read as a form, is answered 400 invalid_unsubscribe, and the address stays subscribed."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    token = unsubscribe_token(SECRET, "jane@example.com")
    headers = {"Content-Type": content_type} if content_type else {}
    async with anonymous.post(f"/v1/unsubscribe/{token}", data=body, headers=headers) as response:
        assert response.status == 400
        assert (await error_of(response))["code"] == "invalid_unsubscribe"
        assert response.headers["Cache-Control"] == "no-store"
    assert await opt_out_of(open_client(unsubscribe_gateway), "jane@example.com") is None


async def test_a_tampered_token_is_403_and_opts_nobody_out(
    unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """A link whose address was changed is refused 403 on POST and GET, and neither address is opted out."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    forged = tamper(unsubscribe_token(SECRET, "jane@example.com"))
    for method in ("POST", "GET"):
        async with anonymous.request(
            method, f"/v1/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"}
        ) as response:
            assert response.status == 403
            assert (await error_of(response))["code"] == "invalid_signature"
    client = open_client(unsubscribe_gateway)
    assert await opt_out_of(client, "joan@example.com") is None
    assert await opt_out_of(client, "jane@example.com") is None


async def test_get_shows_a_button_and_does_not_opt_out(
    unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET on the link (a person, or a link scanner) answers an HTML page whose form POSTs the one-click body, and opts nobody out."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    token = unsubscribe_token(SECRET, "jane&o'neil@example.com")
    async with anonymous.get(f"/v1/unsubscribe/{token}") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        page = await response.text()
    assert '<form method="post">' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "jane&amp;o&#x27;neil@example.com" in page  # the address, escaped
    client = open_client(unsubscribe_gateway)
    assert await opt_out_of(client, "jane%26o'neil@example.com") is None
    # The page's form is what opts out.
    async with anonymous.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}):
        pass
    assert await opt_out_of(client, "jane%26o'neil@example.com") is not None


async def test_the_bearer_exemption_covers_exactly_the_unsubscribe_prefix(
    unsubscribe_gateway: Gateway, open_client: OpenClient
) -> None:
    """Paths that merely look like the unsubscribe prefix, or climb out of it, still need the bearer token or match nothing."""
    anonymous = open_client(unsubscribe_gateway, token=None)
    for path in ("/v1/unsubscribe", "/v1/unsubscribeX/abc", "/v1/opt-outs"):
        async with anonymous.get(path) as response:
            assert response.status == 401, path
    for path in ("/v1/unsubscribe/x/../../opt-outs", "/v1/unsubscribe/..%2F..%2Fopt-outs"):
        async with anonymous.get(path) as response:
            assert response.status in (401, 403, 404), path


async def test_links_are_refused_when_no_secret_is_set(
    amqp: Amqp, settings_for: Any, start_gateway: Any, open_client: OpenClient
) -> None:
    """Without GATEWAY_UNSUBSCRIBE_SECRET the endpoint answers 503 not_configured and opts nobody out."""
    gateway = await start_gateway(settings_for(), consume=False, http=True)
    token = unsubscribe_token(SECRET, "jane@example.com")
    async with open_client(gateway, token=None).post(f"/v1/unsubscribe/{token}") as response:
        assert response.status == 503
        assert (await error_of(response))["code"] == "not_configured"
    assert await opt_out_of(open_client(gateway), "jane@example.com") is None
