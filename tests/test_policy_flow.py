"""Recipients and delivery policy end to end: fan-out, opt-outs, caps and quiet hours."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from tests.conftest import Amqp, settings_env
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job, statuses


async def add_user(pool: asyncpg.Pool, user_id: str, *emails: str, tz: str | None = None) -> None:
    await pool.execute("INSERT INTO users (id, timezone) VALUES ($1, $2)", user_id, tz)
    for index, address in enumerate(emails):
        await pool.execute(
            "INSERT INTO endpoints (user_id, channel, address, created_at)"
            " VALUES ($1, 'email', $2, now() + $3 * interval '1 ms')",
            user_id, address, index,
        )


async def set_limits(pool: asyncpg.Pool, **rules: Any) -> None:
    await pool.execute(
        "INSERT INTO policy (id, rules) VALUES (true, $1::jsonb)"
        " ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules",
        orjson.dumps(rules).decode(),
    )


def user_job(job_id: str, user_id: str, **extra: Any) -> dict[str, Any]:
    job = email_job(job_id, **extra)
    job["to"] = {"user_id": user_id}
    return job


def quiet_window_around_now(zone: str) -> dict[str, str]:
    """A quiet-hours window that holds now in ``zone`` and ends in about an hour."""
    local = datetime.now(ZoneInfo(zone))
    start = (local - timedelta(hours=1)).strftime("%H:%M")
    end = (local + timedelta(hours=1)).strftime("%H:%M")
    return {"start": start, "end": end}


async def test_user_job_goes_to_every_active_endpoint(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A user_id job reaches each active email endpoint once, each recorded as a delivery."""
    await add_user(pg_pool, "u1", "home@example.com", "work@example.com")
    await pg_pool.execute(
        "INSERT INTO endpoints (user_id, channel, address, active) VALUES ('u1', 'email', 'old@example.com', false)"
    )
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("fan-1", "u1"))

    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "fan-1"))
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["home@example.com", "work@example.com"]
    sent = events[-1]
    assert sorted((d["address"], d["status"]) for d in sent["deliveries"]) == [
        ("home@example.com", "sent"), ("work@example.com", "sent"),
    ]
    rows = await pg_pool.fetch("SELECT address, status FROM deliveries WHERE message_id = 'fan-1' ORDER BY address")
    assert [(r["address"], r["status"]) for r in rows] == [("home@example.com", "sent"), ("work@example.com", "sent")]


async def test_unknown_user_and_user_without_endpoint_fail_with_reason(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """An unknown user, or one without an active endpoint on the channel, fails with that reason."""
    await add_user(pg_pool, "no-email")
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("ghost", "nobody"))
    await amqp.publish(user_job("bare", "no-email"))
    events = await amqp.wait_events(
        lambda ev: "failed" in statuses(ev, "ghost") and "failed" in statuses(ev, "bare")
    )
    reasons = {e["message_id"]: e["reason"] for e in events if e["status"] == "failed"}
    assert reasons == {
        "ghost": "unknown user 'nobody'",
        "bare": "user 'no-email' has no active email endpoint",
    }


async def test_opt_out_suppresses_transactional_sms_and_email(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """An opted-out address is suppressed even for transactional jobs, on SMS as on email."""
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, source) VALUES ('sms', '+14155550100', 'api'),"
        " ('email', 'jane@example.com', 'unsubscribe')"
    )
    await start_gateway(settings_for(smtp_server))
    sms = {"id": "otp-sms", "channel": "sms", "to": {"address": "+1 415 555 0100"},
           "content": {"body": "Your code is 1234"}}
    await amqp.publish(sms, routing_key="send.transactional")
    await amqp.publish(email_job("otp-mail", to="Jane@EXAMPLE.com"), routing_key="send.transactional")
    events = await amqp.wait_events(
        lambda ev: "suppressed" in statuses(ev, "otp-sms") and "suppressed" in statuses(ev, "otp-mail")
    )
    suppressed = [e for e in events if e["status"] == "suppressed"]
    assert {(e["message_id"], e["reason"], e["_key"]) for e in suppressed} == {
        ("otp-sms", "opted_out", "message.suppressed"),
        ("otp-mail", "opted_out", "message.suppressed"),
    }
    assert smtp_server.received == []


async def test_opted_out_endpoint_is_skipped_and_others_still_receive(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """Of a user's two endpoints, the opted-out one is suppressed and the other one receives."""
    await add_user(pg_pool, "u2", "keep@example.com", "gone@example.com")
    await pg_pool.execute("INSERT INTO opt_outs (channel, address, source) VALUES ('email', 'gone@example.com', 'api')")
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("partial", "u2"))
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "partial"))
    assert [r.rcpt_tos for r in smtp_server.received] == [["keep@example.com"]]
    assert sorted((d["address"], d["status"]) for d in events[-1]["deliveries"]) == [
        ("gone@example.com", "suppressed"), ("keep@example.com", "sent"),
    ]


async def test_cap_of_three_is_exact_with_two_consumer_processes(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, pg_pool: asyncpg.Pool,
) -> None:
    """Two gateway processes, 200 promotional jobs to one user with a daily cap of 3: 3 sent, 197 suppressed."""
    await add_user(pg_pool, "capped", "capped@example.com", tz="Europe/Lisbon")
    await set_limits(pg_pool, daily_cap=3)
    for i in range(200):
        await amqp.publish(user_job(f"cap-{i}", "capped"))
    env = settings_env(settings_for(smtp_server, prefetch=20, batch_size=5))
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--consumer-only", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        events = await amqp.wait_events(
            lambda ev: len([e for e in ev if e["status"] in ("sent", "suppressed")]) >= 200, timeout=60
        )
    finally:
        for process in processes:
            process.terminate()
            await process.wait()
    final = [e for e in events if e["status"] in ("sent", "suppressed")]
    assert len([e for e in final if e["status"] == "sent"]) == 3
    assert [e["reason"] for e in final if e["status"] == "suppressed"] == ["daily_cap"] * 197
    assert len(smtp_server.received) == 3
    local_day = datetime.now(ZoneInfo("Europe/Lisbon")).date()
    count = await pg_pool.fetchval(
        "SELECT count FROM daily_counters WHERE recipient = 'user:capped' AND day = $1 AND channel = ''",
        local_day,
    )
    assert count == 3


async def test_campaign_cap_and_its_counters(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A campaign cap of 2 lets two messages of that campaign through; other campaigns are not held."""
    await pg_pool.execute("INSERT INTO campaigns (id, rules) VALUES ('spring', '{\"cap\": 2}')")
    for _ in range(2):
        await start_gateway(settings_for(smtp_server, batch_size=3))
    for i in range(10):
        await amqp.publish(email_job(f"spring-{i}", campaign_id="spring"))
    await amqp.publish(email_job("autumn-1", campaign_id="autumn"))
    events = await amqp.wait_events(
        lambda ev: len([e for e in ev if e["status"] in ("sent", "suppressed")]) >= 11
    )
    spring = [e for e in events if e["message_id"].startswith("spring") and e["status"] != "accepted"]
    assert sorted(e["status"] for e in spring) == ["sent"] * 2 + ["suppressed"] * 8
    assert {e["reason"] for e in spring if e["status"] == "suppressed"} == {"campaign_cap"}
    assert "sent" in statuses(events, "autumn-1")


async def test_failed_message_keeps_its_cap_slot(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A slot is spent when sending is decided: a later permanent failure does not give it back."""
    await add_user(pg_pool, "bouncer", "reject@example.com")
    await set_limits(pg_pool, daily_cap=1)
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("first", "bouncer"))
    await amqp.wait_events(lambda ev: "failed" in statuses(ev, "first"))
    await amqp.publish(user_job("second", "bouncer"))
    events = await amqp.wait_events(lambda ev: "suppressed" in statuses(ev, "second"))
    assert events[-1]["reason"] == "daily_cap"


async def test_retry_does_not_take_a_second_slot(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A message deferred by a 4xx keeps the slot it was granted: its retry is not capped again."""
    await add_user(pg_pool, "flaky", "tempfail-1@example.com")
    await set_limits(pg_pool, daily_cap=1)
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("retry-1", "flaky"))
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "retry-1"))
    assert statuses(events, "retry-1") == ["accepted", "deferred", "sent"]


async def test_quiet_hours_defer_in_the_users_zone_then_deliver(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """During the user's quiet hours a promotional job is deferred to the window's end, then sent."""
    zone = "Asia/Kolkata"
    window = quiet_window_around_now(zone)
    await add_user(pg_pool, "sleeper", "sleeper@example.com", tz=zone)
    await set_limits(pg_pool, quiet_hours=window, default_timezone="UTC")
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("night", "sleeper"))
    await amqp.publish(user_job("otp-night", "sleeper"), routing_key="send.transactional")

    events = await amqp.wait_events(
        lambda ev: "deferred" in statuses(ev, "night") and "sent" in statuses(ev, "otp-night")
    )
    deferred = next(e for e in events if e["message_id"] == "night" and e["status"] == "deferred")
    assert deferred["reason"] == "quiet_hours"
    until = datetime.fromisoformat(deferred["until"]).astimezone(ZoneInfo(zone))
    assert until.strftime("%H:%M") == window["end"] and until > datetime.now(timezone.utc)
    assert [r.message["X-Gateway-Message-Id"] for r in smtp_server.received] == ["otp-night"]

    # The night ends: the window is lifted and the clock reaches the deferral's due time.
    await set_limits(pg_pool, default_timezone="UTC")
    await pg_pool.execute("UPDATE messages SET due_at = now() WHERE id = 'night'")
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "night"))
    assert len(smtp_server.received) == 2


async def test_quiet_hours_apply_to_transactional_when_bypass_is_off(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """With transactional_bypass false, transactional jobs obey quiet hours too."""
    await set_limits(pg_pool, quiet_hours=quiet_window_around_now("UTC"), transactional_bypass=False)
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("strict"), routing_key="send.transactional")
    events = await amqp.wait_events(lambda ev: "deferred" in statuses(ev, "strict"))
    assert events[-1]["reason"] == "quiet_hours"


async def test_expires_within_quiet_hours_is_expired_at_once(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A job that would expire before the quiet hours end is expired, not deferred."""
    await set_limits(pg_pool, quiet_hours=quiet_window_around_now("UTC"))
    await start_gateway(settings_for(smtp_server))
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    await amqp.publish(email_job("short-lived", expires_at=expires.isoformat()))
    events = await amqp.wait_events(lambda ev: "expired" in statuses(ev, "short-lived"))
    assert events[-1]["reason"] == "expires_at falls within quiet hours"


async def test_get_message_lists_the_deliveries_of_a_user_job(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """GET /v1/messages/{id} of a user_id job shows one delivery per endpoint with its status."""
    import aiohttp

    from tests.conftest import API_TOKEN

    await add_user(pg_pool, "u3", "a@example.com", "reject@example.com")
    gateway = await start_gateway(settings_for(smtp_server))
    await amqp.publish(user_job("mixed", "u3"))
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "mixed"))
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"http://127.0.0.1:{gateway.port}/v1/messages/mixed",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response:
            message = await response.json()
    assert message["status"] == "sent"
    assert [(d["address"], d["status"]) for d in message["deliveries"]] == [
        ("a@example.com", "sent"), ("reject@example.com", "failed"),
    ]
    assert message["deliveries"][1]["reason"].startswith("recipient refused: 550")
