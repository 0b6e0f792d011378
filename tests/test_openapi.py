"""The OpenAPI document: it lists every route and only them, each with its handler's scope, and
a live gateway answers generated requests as it says (schemathesis)."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.api import scope_of
from gateway.app import Gateway
from gateway.openapi import openapi_document
from tests.conftest import API_TOKEN, Amqp, bare_app
from tests.test_api import OpenClient, http_gateway, open_client

__all__ = ["http_gateway", "open_client"]  # fixtures used here, defined with the API tests

METHODS = ("get", "put", "post", "patch", "delete")
# The rules the document cannot state (IANA time zones, valid addresses and numbers, Jinja
# syntax, opaque cursors, "exactly one of content and template") are answered 422: the check
# that every schema-valid request is accepted would only report those.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def app_routes() -> dict[tuple[str, str], Any]:
    """(method, path) → handler for every route of the app, HEAD aside."""
    app = bare_app()
    return {
        (route.method.lower(), route.resource.canonical): route.handler
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_the_document_lists_every_route_and_nothing_else() -> None:
    """Every route of create_app is an operation of the document, and every operation is a route."""
    routes = set(app_routes())
    assert ("post", "/v1/messages") in routes
    assert set(operations(openapi_document())) == routes


def test_each_operation_names_the_scope_its_handler_declares() -> None:
    """x-scope and bearer security match the handler's declared scope; routes without one need no key."""
    handlers = app_routes()
    for key, operation in operations(openapi_document()).items():
        scope = scope_of(handlers[key])
        assert operation.get("x-scope") == (scope.value if scope else None), key
        assert operation["security"] == ([{"bearer": []}] if scope else []), key


def test_every_error_answer_has_the_error_shape() -> None:
    """Each 4xx and 5xx answer of the document is one of the shared JSON error answers (readyz's 503 aside)."""
    document = openapi_document()
    shared = document["components"]["responses"]
    for (method, path), operation in operations(document).items():
        for status, answer in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            name = answer["$ref"].rsplit("/", 1)[1]
            schema = shared[name]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


async def test_the_document_is_served_without_a_key(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET /openapi.json answers the document to anyone."""
    async with open_client(http_gateway, token=None).get("/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == openapi_document()


async def test_a_live_gateway_answers_as_its_document_says(
    amqp: Amqp, settings_for: Any, start_gateway: Any, tmp_path: Path
) -> None:
    """schemathesis sends generated requests to every operation: no 5xx, and every status, content type, body and Allow header is the document's."""
    telnyx = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    settings = settings_for(
        # Every webhook configured, so that generated requests reach their signature checks.
        twilio_auth_token="twilio-auth-token",
        public_url="http://127.0.0.1",
        unsubscribe_secret="unsubscribe-secret-" + "x" * 16,
        vonage_signature_secret="vonage-secret",
        telnyx_public_key=base64.b64encode(telnyx).decode(),
    )
    gateway: Gateway = await start_gateway(settings, consume=False)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"http://127.0.0.1:{gateway.port}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_TOKEN}",
        *CHECKS,
        "--max-examples",
        "20",
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=100)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail("schemathesis ran for more than 100 s")
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[max(report.find("= FAILURES ="), 0) :]
