"""Push through the whole pipeline against a fake FCM: fan-out by platform, dead tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Amqp
from tests.fake_fcm import FakeFcm
from tests.test_email_flow import statuses

PROJECT, EMAIL = "demo-project", "gateway@demo-project.iam.gserviceaccount.com"


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[tuple[FakeFcm, Path]]:
    """A fake FCM and a service-account file for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake = FakeFcm(public_key=key.public_key(), client_email=EMAIL, project_id=PROJECT)
    await fake.start()
    credentials = tmp_path / "service-account.json"
    credentials.write_bytes(orjson.dumps({
        "type": "service_account", "project_id": PROJECT, "client_email": EMAIL,
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
    }))
    yield fake, credentials
    await fake.close()


def push_settings(settings_for: Any, fcm: tuple[FakeFcm, Path]) -> Any:
    fake, credentials = fcm
    return settings_for(fcm_credentials_file=credentials, fcm_base_url=fake.url,
                        fcm_token_url=fake.token_url)


def push_job(job_id: str, to: dict[str, Any]) -> dict[str, Any]:
    return {"id": job_id, "channel": "push", "to": to,
            "content": {"title": "Hi {{ name }}", "body": "Your order shipped", "data": {"order": 42}},
            "data": {"name": "Ana"}}


async def test_push_to_a_user_skips_and_deactivates_a_dead_token(
    amqp: Amqp, fcm: tuple[FakeFcm, Path], settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A user's live FCM token gets the push; an UNREGISTERED one is deactivated and announced."""
    await pg_pool.execute("INSERT INTO users (id) VALUES ('ana')")
    await pg_pool.execute(
        "INSERT INTO endpoints (user_id, channel, address, platform) VALUES"
        " ('ana', 'push', 'live-token-1', 'fcm'), ('ana', 'push', '__unregistered__', 'fcm')"
    )
    await start_gateway(push_settings(settings_for, fcm))
    await amqp.publish(push_job("push-1", {"user_id": "ana"}))
    events = await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, "push-1")
        and any(e.get("event") == "endpoint.token_invalid" for e in ev)
    )
    fake, _ = fcm
    [message] = fake.messages
    assert message["token"] == "live-token-1"
    assert message["notification"] == {"title": "Hi Ana", "body": "Your order shipped"}
    assert message["data"] == {"order": "42"}
    dead = next(e for e in events if e.get("event") == "endpoint.token_invalid")
    assert (dead["_key"], dead["address"], dead["message_id"]) == (
        "endpoint.token_invalid", "__unregistered__", "push-1",
    )
    active = await pg_pool.fetchval(
        "SELECT active FROM endpoints WHERE address = '__unregistered__'"
    )
    assert active is False
    sent = next(e for e in events if e.get("status") == "sent")
    assert sorted((d["address"], d["status"]) for d in sent["deliveries"]) == [
        ("__unregistered__", "failed"), ("live-token-1", "sent"),
    ]


async def test_raw_push_token_uses_the_only_configured_service(
    amqp: Amqp, fcm: tuple[FakeFcm, Path], settings_for: Any, start_gateway: Any
) -> None:
    """A raw device token goes to the one push service configured (or the one to.platform names)."""
    await start_gateway(push_settings(settings_for, fcm))
    await amqp.publish(push_job("push-raw", {"address": "raw-token"}))
    await amqp.publish(push_job("push-apns", {"address": "ios-token", "platform": "apns"}))
    events = await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, "push-raw") and "failed" in statuses(ev, "push-apns")
    )
    fake, _ = fcm
    assert [m["token"] for m in fake.messages] == ["raw-token"]
    failed = next(e for e in events if e.get("status") == "failed")
    assert failed["reason"] == "no sender configured for push (apns)"


async def test_job_expiry_and_collapse_id_reach_the_push_service(
    amqp: Amqp, fcm: tuple[FakeFcm, Path], settings_for: Any, start_gateway: Any
) -> None:
    """The job's expires_at becomes the push TTL and its collapse_id the collapse key."""
    from datetime import datetime, timedelta, timezone

    await start_gateway(push_settings(settings_for, fcm))
    job = push_job("push-ttl", {"address": "raw-token"})
    job["content"]["collapse_id"] = "order-42"
    job["expires_at"] = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    await amqp.publish(job)
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "push-ttl"))
    fake, _ = fcm
    [message] = fake.messages
    assert message["android"]["collapse_key"] == "order-42"
    assert 3500 <= int(message["android"]["ttl"].rstrip("s")) <= 3600
    assert message["apns"]["headers"]["apns-collapse-id"] == "order-42"
