"""Fixtures against the real PostgreSQL and RabbitMQ, and a local SMTP server (aiosmtpd).

Isolation: the session gets its own database and its own RabbitMQ virtual host, both removed at
the end; each test starts from empty tables and empty queues. A service that cannot be reached
fails the run (it is never skipped): ``make test`` starts them.

``TEST_AMQP_QUEUE_TYPE=quorum`` runs the session against quorum queues (``make test`` runs the
AMQP end-to-end tests once more that way); the default is ``classic``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp import web

from gateway.amqp import QueueType, declare_queue, declare_topology
from gateway.api import create_app
from gateway.app import Gateway
from gateway.broker import DEAD_QUEUE, EVENTS_EXCHANGE, JOB_QUEUES, JOBS_EXCHANGE
from gateway.migrate import migrate
from gateway.settings import Settings
from tests.smtp_server import RecordingSmtp

pytest_plugins = ["tests.conftest_logs"]  # log hygiene over the whole session

PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_HOST_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
API_TOKEN = "test-token-" + "x" * 16
QUEUE_TYPE = cast(QueueType, os.environ.get("TEST_AMQP_QUEUE_TYPE", "classic"))
if QUEUE_TYPE not in ("classic", "quorum"):
    raise pytest.UsageError(f"TEST_AMQP_QUEUE_TYPE must be classic or quorum, not {QUEUE_TYPE!r}")


def _database_url(name: str) -> str:
    parts = urllib.parse.urlsplit(PG_ADMIN_URL)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh database for this session, migrated, dropped at the end."""
    name = f"gw_test_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc} (run `make test`)")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    try:
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _rabbitmqctl(*args: str) -> bool:
    try:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ virtual host for this session (the default one if rabbitmqctl is unavailable).

    Quorum sessions insist on their own virtual host: the default one holds classic queues.
    """
    vhost = f"gw-test-{QUEUE_TYPE}-{secrets.token_hex(4)}"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
        "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
    ):
        yield AMQP_HOST_URL.rstrip("/") + "/" + urllib.parse.quote(vhost, safe="")
        _rabbitmqctl("delete_vhost", vhost)
    elif QUEUE_TYPE == "quorum":
        pytest.fail("TEST_AMQP_QUEUE_TYPE=quorum needs rabbitmqctl to create a virtual host")
    else:
        yield AMQP_HOST_URL


@pytest.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def amqp_connection(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    try:
        connection = await aio_pika.connect_robust(amqp_url, timeout=10)
    except Exception as exc:
        pytest.fail(f"RabbitMQ unreachable at {amqp_url}: {exc} (run `make test`)")
    yield connection
    await connection.close()


@pytest.fixture
async def clean(pg_pool: asyncpg.Pool, amqp_connection: Any) -> None:
    """Empty tables and empty gateway queues before the test."""
    await pg_pool.execute(
        "TRUNCATE messages, message_events, users, endpoints, opt_outs, policy, campaigns,"
        " daily_counters, campaign_counters, deliveries, templates, template_versions,"
        " numbers, inbound_messages, api_keys, provider_receipts"
    )
    channel = await amqp_connection.channel()
    await declare_topology(channel, queue_type=QUEUE_TYPE)
    for name in [*JOB_QUEUES, DEAD_QUEUE]:
        queue = await declare_queue(channel, name, queue_type=QUEUE_TYPE)
        await queue.purge()
    await channel.close()


class Amqp:
    """The test's own side of the broker: publish jobs, read events and dead letters."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, events: aio_pika.abc.AbstractQueue):
        self.channel = channel
        self.events_queue = events
        self.events: list[dict[str, Any]] = []

    async def publish(self, job: dict[str, Any] | bytes, routing_key: str = "send.promotional") -> None:
        body = job if isinstance(job, bytes) else orjson.dumps(job)
        exchange = await self.channel.get_exchange(JOBS_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, content_type="application/json", delivery_mode=2),
            routing_key=routing_key,
        )

    async def wait_events(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Collect events until ``predicate(events)`` holds; fail after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.events):
            if loop.time() > deadline:
                pytest.fail(f"events never matched; got {self.events}")
            # Polled rather than cancelled: cancelling aio-pika's get() mid-flight leaks it.
            message = await self.events_queue.get(timeout=1, fail=False)
            if message is None:
                await asyncio.sleep(0.02)
                continue
            await message.ack()
            self.events.append(orjson.loads(message.body) | {"_key": message.routing_key})
        return self.events

    async def dead_letters(self, count: int, timeout: float = 10) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(DEAD_QUEUE)
        found: list[aio_pika.abc.AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < count:
            message = await queue.get(timeout=1, fail=False)
            if message is None:
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"expected {count} dead letters, found {len(found)}")
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            found.append(message)
        return found


@pytest.fixture
async def amqp(clean: None, amqp_connection: Any) -> AsyncIterator[Amqp]:
    """A channel plus a private queue bound to every event on ``gateway.events``."""
    channel = await amqp_connection.channel()
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    queue = await channel.declare_queue(f"test.events.{secrets.token_hex(4)}", exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="#")
    yield Amqp(channel, queue)
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()


@pytest.fixture
def smtp_server() -> Iterator[RecordingSmtp]:
    """A local SMTP server that records what it accepts (magic recipients make it refuse)."""
    server = RecordingSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings_for(database_url: str, amqp_url: str) -> Callable[..., Settings]:
    """Build Settings for a test: real services, fast retries, an ephemeral HTTP port."""

    def build(smtp: RecordingSmtp | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "amqp_url": amqp_url,
            "api_token": API_TOKEN,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.2,
            "scheduler_interval_seconds": 0.05,
            "batch_wait_ms": 2,
            "shutdown_grace_seconds": 5,
            "amqp_queue_type": QUEUE_TYPE,
            "api_key_cache_seconds": 0,  # a revoked key is refused at once
        }
        if smtp is not None:
            values.update(smtp_host=smtp.host, smtp_port=smtp.port)
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
async def start_gateway(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Any]]:
    """Start gateways in this process (stopped at the end of the test)."""
    started: list[Gateway] = []

    async def start(settings: Settings, **kwargs: Any) -> Gateway:
        gateway = Gateway(settings, name=request.node.name, **kwargs)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        await gateway.stop()


def bare_app() -> web.Application:
    """The API's aiohttp app without backends: its routes can be inspected, not called."""
    settings = Settings(
        database_url="postgresql://x@localhost/x", amqp_url="amqp://localhost/", api_token="x" * 16
    )
    return create_app(settings=settings, store=None, broker=None)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The GATEWAY_* environment that makes a gateway process read these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"GATEWAY_{name.upper()}"] = str(getattr(value, "value", value))
    env["GATEWAY_LOG_FORMAT"] = "json"
    return env


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for localhost and 127.0.0.1, made with openssl
    once per run: the TLS tests' servers present it, their clients trust it as a CA."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
