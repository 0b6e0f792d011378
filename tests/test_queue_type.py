"""GATEWAY_AMQP_QUEUE_TYPE: the gateway's queues get that type, and a mismatch stops the start."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from gateway.amqp import AmqpBroker, QueueType, QueueTypeMismatch
from gateway.broker import DEAD_QUEUE, JOB_QUEUES
from tests.conftest import QUEUE_TYPE, settings_env

OTHER_TYPE: QueueType = "quorum" if QUEUE_TYPE == "classic" else "classic"


def _vhost(amqp_url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path[1:]) or "/"


def _rabbitmqctl(*args: str) -> list[list[str]]:
    """Rows of a quiet ``rabbitmqctl`` listing, tab-separated."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line]


async def test_the_gateway_queues_have_the_configured_type(
    clean: None, settings_for: Any, start_gateway: Any, amqp_url: str
) -> None:
    """A started gateway consumes from queues of type GATEWAY_AMQP_QUEUE_TYPE, all durable."""
    await start_gateway(settings_for())
    rows = await asyncio.to_thread(
        _rabbitmqctl, "list_queues", "-p", _vhost(amqp_url), "name", "type", "durable"
    )
    found = {name: (kind, durable) for name, kind, durable in rows}
    assert {name: found[name] for name in [*JOB_QUEUES, DEAD_QUEUE]} == {
        name: (QUEUE_TYPE, "true") for name in [*JOB_QUEUES, DEAD_QUEUE]
    }


async def test_the_other_queue_type_is_refused_naming_the_setting(
    clean: None, amqp_url: str
) -> None:
    """Queues that exist with the other type: QueueTypeMismatch, one line naming the setting."""
    name = f"test-mismatch-{secrets.token_hex(4)}"
    with pytest.raises(QueueTypeMismatch) as caught:
        await AmqpBroker.connect(amqp_url, prefetch=1, name=name, queue_type=OTHER_TYPE)
    message = str(caught.value)
    assert message.startswith(f"configuration error: GATEWAY_AMQP_QUEUE_TYPE={OTHER_TYPE} ")
    assert "PRECONDITION_FAILED" in message and "x-queue-type" in message
    assert "\n" not in message
    connections = await asyncio.to_thread(
        _rabbitmqctl, "list_connections", "-p", _vhost(amqp_url), "client_properties"
    )
    assert not any(name in row[0] for row in connections)  # the refused connection was closed


async def test_serve_with_the_other_queue_type_exits_2_with_one_line(
    clean: None, settings_for: Any
) -> None:
    """`gateway serve` against queues of the other type: exit status 2, one line on stderr."""
    env = settings_env(settings_for(amqp_queue_type=OTHER_TYPE))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--consumer-only",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    # Besides the JSON log lines of the shutdown: the error, as one line.
    lines = [line for line in stderr.decode().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: GATEWAY_AMQP_QUEUE_TYPE={OTHER_TYPE} ")
    assert "docs/deploy.md" in lines[0]
