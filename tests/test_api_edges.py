"""The edges of every route: body size limits and 405s answered as JSON, and the malformed
requests that schemathesis (tests/test_openapi.py) found answered with a 500 or wrongly accepted."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import gateway.api_recipients
from gateway.app import Gateway
from tests.conftest import Amqp, bare_app
from tests.test_api import OpenClient, error_of, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")
# Over GATEWAY_MAX_REQUEST_BYTES as set below, and over the webhooks' own 64 KiB.
OVERSIZED = b"x" * 70_000


def routes_by_path() -> dict[str, set[str]]:
    """Path template → its methods (HEAD aside), for every route of the app."""
    app = bare_app()
    paths: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.resource is not None and route.method != "HEAD":
            paths.setdefault(route.resource.canonical, set()).add(route.method)
    return paths


# Path values every handler accepts, so that it goes on to read the body.
_VALUES = {"channel": "sms", "address": "+14155550100", "number": "+14155550100"}


def concrete(template: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: _VALUES.get(m[1], "x"), template)


@pytest.fixture
async def configured_gateway(amqp: Amqp, settings_for: Any, start_gateway: Any) -> Gateway:
    """An HTTP-only gateway with a 4 KiB request limit and every webhook secret set."""
    telnyx = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    settings = settings_for(
        max_request_bytes=4096,
        twilio_auth_token="twilio-auth-token",
        public_url="http://127.0.0.1",
        unsubscribe_secret="unsubscribe-secret-" + "x" * 16,
        vonage_signature_secret="vonage-secret",
        telnyx_public_key=base64.b64encode(telnyx).decode(),
    )
    gateway: Gateway = await start_gateway(settings, consume=False)
    return gateway


async def test_every_route_taking_a_body_refuses_an_oversized_one_with_a_json_413(
    configured_gateway: Gateway, open_client: OpenClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each POST, PUT and PATCH route answers 413 payload_too_large in the error shape to a body over its limit (the import's own limit included)."""
    monkeypatch.setattr(gateway.api_recipients, "MAX_UPLOAD_BYTES", 65_536)
    client = open_client(configured_gateway)
    walked = 0
    for template, methods in routes_by_path().items():
        for method in methods & {"POST", "PUT", "PATCH"}:
            headers = {
                "Content-Type": "text/csv" if template == "/v1/users:import" else "application/json"
            }
            async with client.request(
                method, concrete(template), data=OVERSIZED, headers=headers
            ) as response:
                if template.startswith("/v1/unsubscribe/"):
                    # The one-click POST checks its token before it reads the body: a forged
                    # link is 403 whatever its size.
                    assert response.status == 403, (method, template)
                    continue
                assert response.status == 413, (method, template, await response.text())
                assert (await error_of(response))["code"] == "payload_too_large"
                walked += 1
    assert walked >= 15  # the walk really happened


async def test_every_path_answers_a_method_it_lacks_with_a_json_405_and_allow(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """On every path a method it has no route for is answered 405 method_not_allowed in the error shape, with the path's methods in Allow."""
    client = open_client(http_gateway)
    for template, methods in routes_by_path().items():
        method = next(m for m in METHODS if m not in methods)
        async with client.request(method, concrete(template)) as response:
            assert response.status == 405, (method, template)
            assert (await error_of(response))["code"] == "method_not_allowed"
            allowed = set(response.headers["Allow"].split(","))
        assert allowed - {"HEAD"} == methods, template


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"id\n"),  # no boundary
        ("multipart/form-data; boundary=zzz", b"not multipart at all"),
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nbroken header\r\n\r\nid\r\n--zzz--\r\n"),
    ],
)
async def test_a_malformed_multipart_upload_is_answered_400(
    content_type: str, body: bytes, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An import whose multipart body cannot be read is answered 400 invalid_multipart (it was a 500)."""
    client = open_client(http_gateway)
    headers = {"Content-Type": content_type}
    async with client.post("/v1/users:import", data=body, headers=headers) as response:
        assert response.status == 400
        error = await error_of(response)
    assert error["code"] == "invalid_multipart"
    assert "\n" not in error["message"]


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("multipart/form-data", b"x", 403),  # read as a form: then the signature decides
        ("multipart/form-data; boundary=zzz", b"garbage", 403),
        ("application/x-www-form-urlencoded; charset=bogus", b"a=b", 403),
        ("application/x-www-form-urlencoded", b"\xff\xfe=1", 400),
    ],
)
async def test_a_status_callback_body_that_aiohttp_cannot_read_as_a_form_is_no_500(
    content_type: str,
    body: bytes,
    status: int,
    configured_gateway: Gateway,
    open_client: OpenClient,
) -> None:
    """A Twilio status callback with a multipart type, an unknown charset (both 500s before) or bytes that are not UTF-8 is answered 403 or 400 invalid_callback."""
    client = open_client(configured_gateway, token=None)
    headers = {"Content-Type": content_type, "X-Twilio-Signature": "x"}
    async with client.post("/v1/status/twilio", data=body, headers=headers) as response:
        assert response.status == status
        code = (await error_of(response))["code"]
    assert code == ("invalid_signature" if status == 403 else "invalid_callback")


@pytest.mark.parametrize("body", [b"false", b"[]", b"0", b'""'])
@pytest.mark.parametrize("path", ["/v1/opt-outs/sms/+14155550100", "/v1/numbers/+14155550100"])
async def test_a_json_body_that_is_not_an_object_is_refused_not_taken_as_empty(
    path: str, body: bytes, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """The optional body of an opt-out or number PUT may be absent, but false or [] is answered 422 (it was taken as {})."""
    async with open_client(http_gateway).put(path, data=body) as response:
        assert response.status == 422
        assert (await error_of(response))["code"] == "invalid_request"


async def test_a_null_user_id_in_the_body_is_judged_by_the_model(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """PATCH may say "id": null (its model allows it), a PUT may not: 422 naming id, not a mismatch with the path."""
    client = open_client(http_gateway)
    async with client.put("/v1/users/jane", json={"id": None}) as response:
        assert response.status == 422
        assert (await error_of(response))["message"].startswith(
            "id: Input should be a valid string"
        )
    async with client.put("/v1/users/jane", json={}) as response:
        assert response.status == 201
    async with client.patch("/v1/users/jane", json={"id": None, "locale": "pt-BR"}) as response:
        assert response.status == 200
        assert (await response.json())["locale"] == "pt-BR"


async def test_a_template_default_too_large_for_64_bits_reads_back(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A default of 5e27 is stored and answered again (PostgreSQL writes it out as a 28-digit integer, which GET answered with a 500)."""
    client = open_client(http_gateway)
    body = {"sms": {"body": "{{ n }}"}, "defaults": {"n": 5e27, "m": [-9.5e40]}}
    async with client.put("/v1/templates/big", json=body) as response:
        assert response.status == 201
    async with client.get("/v1/templates/big") as response:
        assert response.status == 200
        assert (await response.json())["body"]["defaults"] == {"n": 5e27, "m": [-9.5e40]}
