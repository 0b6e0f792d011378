"""The HTTP API against a gateway started in process, with the real database and broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.app import Gateway
from gateway.broker import JOB_QUEUES
from tests.conftest import API_TOKEN, Amqp
from tests.smtp_server import RecordingSmtp

OpenClient = Callable[..., aiohttp.ClientSession]
PROMOTIONAL = "gateway.send.promotional"
TRANSACTIONAL = "gateway.send.transactional"


def email_job(job_id: str, **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "channel": "email",
        "to": {"address": "jane@example.com"},
        "content": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}."},
        "data": {"name": "Jane"},
    }
    job.update(extra)
    return job


@pytest.fixture
async def open_client() -> AsyncIterator[OpenClient]:
    """Open HTTP clients on a gateway (with the API token unless told otherwise); closed after."""
    sessions: list[aiohttp.ClientSession] = []

    def open_(gateway: Gateway, *, token: str | None = API_TOKEN) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        session = aiohttp.ClientSession(f"http://127.0.0.1:{gateway.port}", headers=headers)
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        await session.close()


@pytest.fixture
async def http_gateway(amqp: Amqp, settings_for: Any, start_gateway: Any) -> Gateway:
    """An HTTP-only gateway (no consumer, no scheduler) on clean tables and queues."""
    gateway: Gateway = await start_gateway(settings_for(), consume=False, http=True)
    return gateway


async def queue_counts(amqp: Amqp) -> dict[str, int]:
    """Ready messages in each job queue."""
    counts = {}
    for name in JOB_QUEUES:
        queue = await amqp.channel.get_queue(name)
        # declare() again: a robust channel hands back its cached queue, stale count included.
        counts[name] = (await queue.declare()).message_count or 0
    return counts


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer (and check the shape on the way)."""
    assert response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def wait_status(
    client: aiohttp.ClientSession, message_id: str, status: str
) -> dict[str, Any]:
    """Poll GET /v1/messages/{id} until the message has ``status``; fail after 10 s."""
    body: dict[str, Any] = {}
    for _ in range(200):
        async with client.get(f"/v1/messages/{message_id}") as response:
            if response.status == 200:
                body = await response.json()
                if body["status"] == status:
                    return body
        await asyncio.sleep(0.05)
    pytest.fail(f"message {message_id} never reached {status}; last seen {body}")


async def test_every_v1_route_refuses_a_missing_or_wrong_bearer_token(
    http_gateway: Gateway, open_client: OpenClient, amqp: Amqp
) -> None:
    """Without the right bearer token every /v1 route answers 401 in the JSON error shape, and nothing is accepted."""
    anonymous = open_client(http_gateway, token=None)
    wrong_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"},
        {"Authorization": f"Bearer {API_TOKEN}x"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": API_TOKEN},
        {"Authorization": "Bearer "},
    ]
    routes = [("POST", "/v1/messages"), ("GET", "/v1/messages/job-auth"), ("GET", "/v1/unknown")]
    for method, path in routes:
        for headers in wrong_headers:
            async with anonymous.request(
                method, path, headers=headers, data=orjson.dumps(email_job("job-auth"))
            ) as response:
                assert response.status == 401, (method, path, headers)
                assert (await error_of(response))["code"] == "unauthorized"

    async with open_client(http_gateway).get("/v1/messages/job-auth") as response:
        assert response.status == 404
    assert await queue_counts(amqp) == {TRANSACTIONAL: 0, PROMOTIONAL: 0}


@pytest.mark.parametrize(
    ("kind", "queue"),
    [(None, PROMOTIONAL), ("promotional", PROMOTIONAL), ("transactional", TRANSACTIONAL)],
)
async def test_post_accepts_and_publishes_to_the_queue_of_its_kind(
    kind: str | None, queue: str, http_gateway: Gateway, open_client: OpenClient, amqp: Amqp
) -> None:
    """A valid job is answered 202 with id, status and kind, and published once with routing key send.<kind>."""
    job = email_job("job-kind") if kind is None else email_job("job-kind", kind=kind)
    body = orjson.dumps(job)
    async with open_client(http_gateway).post("/v1/messages", data=body) as response:
        assert response.status == 202
        expected_kind = kind or "promotional"
        assert await response.json() == {
            "id": "job-kind",
            "status": "accepted",
            "kind": expected_kind,
        }

    counts = await queue_counts(amqp)
    assert counts == {name: int(name == queue) for name in JOB_QUEUES}
    published = await (await amqp.channel.get_queue(queue)).get(timeout=5)
    await published.ack()
    assert published.body == body
    assert published.message_id == "job-kind"
    assert published.routing_key == f"send.{expected_kind}"


async def test_duplicate_post_is_answered_200_and_not_published_again(
    http_gateway: Gateway, open_client: OpenClient, amqp: Amqp
) -> None:
    """Posting the same id again answers 200 with duplicate true and the stored status; nothing more is published."""
    client = open_client(http_gateway)
    async with client.post("/v1/messages", json=email_job("job-twice")) as response:
        assert response.status == 202
    changed = email_job("job-twice", kind="transactional", data={"name": "Someone else"})
    async with client.post("/v1/messages", json=changed) as response:
        assert response.status == 200
        assert await response.json() == {"id": "job-twice", "status": "accepted", "duplicate": True}

    assert await queue_counts(amqp) == {TRANSACTIONAL: 0, PROMOTIONAL: 1}


async def test_invalid_json_is_answered_400(http_gateway: Gateway, open_client: OpenClient) -> None:
    """A body that is not JSON is answered 400 invalid_json."""
    async with open_client(http_gateway).post("/v1/messages", data=b'{"id": "x",') as response:
        assert response.status == 400
        error = await error_of(response)
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("invalid JSON")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": None}, "to"),
        ({"channel": "fax"}, "channel"),
        ({"send_at": "2030-01-01T10:00:00"}, "send_at"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_schema_violation_is_answered_422_naming_the_field(
    change: dict[str, Any], field: str, http_gateway: Gateway, open_client: OpenClient, amqp: Amqp
) -> None:
    """A job that breaks the schema is answered 422 invalid_job with a message naming the field, and is not published."""
    job = {k: v for k, v in {**email_job("job-bad"), **change}.items() if v is not None}
    async with open_client(http_gateway).post("/v1/messages", json=job) as response:
        assert response.status == 422
        error = await error_of(response)
    assert error["code"] == "invalid_job"
    assert error["message"].startswith(f"{field}:")
    assert await queue_counts(amqp) == {TRANSACTIONAL: 0, PROMOTIONAL: 0}


async def test_job_over_max_job_bytes_is_answered_413(
    amqp: Amqp, settings_for: Any, start_gateway: Any, open_client: OpenClient
) -> None:
    """A job larger than max_job_bytes is answered 413 naming the limit, and is not published."""
    gateway = await start_gateway(settings_for(max_job_bytes=2048), consume=False)
    job = email_job("job-big", data={"pad": "x" * 4096})
    async with open_client(gateway).post("/v1/messages", json=job) as response:
        assert response.status == 413
        error = await error_of(response)
    assert error["code"] == "payload_too_large"
    assert "2048" in error["message"]
    assert await queue_counts(amqp) == {TRANSACTIONAL: 0, PROMOTIONAL: 0}


async def test_request_over_max_request_bytes_is_answered_413_as_json(
    amqp: Amqp, settings_for: Any, start_gateway: Any, open_client: OpenClient
) -> None:
    """A body larger than max_request_bytes is refused by aiohttp itself, still as a JSON 413."""
    gateway = await start_gateway(settings_for(max_request_bytes=4096), consume=False)
    job = email_job("job-huge", data={"pad": "x" * 8192})
    async with open_client(gateway).post("/v1/messages", json=job) as response:
        assert response.status == 413
        assert (await error_of(response))["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/messages/a/b"])
async def test_unknown_path_is_answered_404_as_json(
    path: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """An unknown path is answered 404 in the JSON error shape."""
    async with open_client(http_gateway).get(path) as response:
        assert response.status == 404
        assert (await error_of(response))["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/messages", "GET,HEAD,POST"),
        ("DELETE", "/v1/messages/x", "GET,HEAD"),
        ("POST", "/healthz", "GET,HEAD"),
    ],
)
async def test_wrong_method_is_answered_405_as_json_with_allow(
    method: str, path: str, allow: str, http_gateway: Gateway, open_client: OpenClient
) -> None:
    """A known path with the wrong method is answered 405 in the JSON error shape with an Allow header."""
    async with open_client(http_gateway).request(method, path) as response:
        assert response.status == 405
        assert response.headers["Allow"] == allow
        assert (await error_of(response))["code"] == "method_not_allowed"


async def test_get_unknown_message_is_answered_404(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET of an id never accepted is answered 404 not_found."""
    async with open_client(http_gateway).get("/v1/messages/never-seen") as response:
        assert response.status == 404
        error = await error_of(response)
    assert error == {"code": "not_found", "message": "no message with this id", "details": None}


async def test_posted_job_is_sent_and_its_timeline_is_served(
    amqp: Amqp,
    smtp_server: RecordingSmtp,
    settings_for: Any,
    start_gateway: Any,
    open_client: OpenClient,
) -> None:
    """A transactional job posted to a full gateway is sent, announced with its kind, and GET shows accepted then sent."""
    gateway = await start_gateway(settings_for(smtp_server))
    client = open_client(gateway)
    job = email_job("job-http", kind="transactional", campaign_id="welcome")
    async with client.post("/v1/messages", json=job) as response:
        assert response.status == 202

    [received] = await smtp_server.wait_for(1)
    assert received.message["X-Gateway-Message-Id"] == "job-http"
    events = await amqp.wait_events(lambda ev: any(e["status"] == "sent" for e in ev))
    assert [e["status"] for e in events] == ["accepted", "sent"]  # accepted by the API itself
    sent = next(e for e in events if e["status"] == "sent")
    assert (sent["message_id"], sent["kind"], sent["_key"]) == (
        "job-http",
        "transactional",
        "message.sent",
    )

    message = await wait_status(client, "job-http", "sent")
    assert message["id"] == "job-http"
    assert (message["channel"], message["kind"], message["campaign_id"]) == (
        "email",
        "transactional",
        "welcome",
    )
    assert message["attempts"] == 1
    assert [e["status"] for e in message["events"]] == ["accepted", "sent"]
    timestamps = [e["timestamp"] for e in message["events"]]
    assert all(t.endswith("Z") for t in timestamps)
    assert timestamps == sorted(timestamps)


async def test_healthz_answers_200(http_gateway: Gateway, open_client: OpenClient) -> None:
    """GET /healthz answers 200 without a token."""
    async with open_client(http_gateway, token=None).get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz_reports_database_and_broker_ok(
    http_gateway: Gateway, open_client: OpenClient
) -> None:
    """GET /readyz answers 200 with the database and broker checks ok."""
    async with open_client(http_gateway, token=None).get("/readyz") as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "ready",
            "checks": {"database": "ok", "broker": "ok"},
        }


async def test_lost_publish_is_republished_by_the_scheduler_once_the_claim_lapses(
    amqp: Amqp,
    smtp_server: RecordingSmtp,
    settings_for: Any,
    start_gateway: Any,
    open_client: OpenClient,
) -> None:
    """A job accepted over HTTP whose publish was lost is re-published by the scheduler after requeue_after and sent once."""
    http_only = await start_gateway(settings_for(requeue_after_seconds=0.3), consume=False)
    async with open_client(http_only).post("/v1/messages", json=email_job("job-lost")) as response:
        assert response.status == 202
    queue = await amqp.channel.get_queue(PROMOTIONAL)
    purged = await queue.purge()  # the publish is lost
    assert purged.message_count == 1
    assert await queue_counts(amqp) == {TRANSACTIONAL: 0, PROMOTIONAL: 0}

    await start_gateway(settings_for(smtp_server), http=False)
    [received] = await smtp_server.wait_for(1)
    assert received.message["X-Gateway-Message-Id"] == "job-lost"
    message = await wait_status(open_client(http_only), "job-lost", "sent")
    assert [e["status"] for e in message["events"]] == ["accepted", "sent"]
    await asyncio.sleep(0.5)
    assert len(smtp_server.received) == 1
