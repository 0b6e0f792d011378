"""End to end through the real broker, database and a local SMTP server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from tests.conftest import Amqp
from tests.smtp_server import RecordingSmtp


def email_job(job_id: str, to: str = "jane@example.com", **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "channel": "email",
        "to": {"address": to},
        "content": {
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }}, your code is {{ code }}.",
            "html": "<p>Hi {{ name }}, your code is <b>{{ code }}</b>.</p>",
        },
        "data": {"name": "Jane <3", "code": "1234"},
    }
    job.update(extra)
    return job


def statuses(events: list[dict[str, Any]], message_id: str) -> list[str]:
    return [e["status"] for e in events if e.get("message_id") == message_id and "status" in e]


async def test_job_published_arrives_by_smtp_with_headers_and_bodies(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A job on gateway.jobs reaches the SMTP server as multipart text+HTML with rendered headers."""
    await start_gateway(settings_for(smtp_server, email_from="Shop <shop@example.org>"))
    await amqp.publish(email_job("job-1", to="Jane@Example.COM"), routing_key="send.transactional")

    [received] = await smtp_server.wait_for(1)
    message = received.message
    assert received.mail_from == "shop@example.org"
    assert received.rcpt_tos == ["Jane@example.com"]
    assert message["Subject"] == "Hello Jane <3"
    assert message["From"] == "Shop <shop@example.org>"
    assert message["To"] == "Jane@example.com"
    assert message["X-Gateway-Message-Id"] == "job-1"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert text.strip() == "Hi Jane <3, your code is 1234."
    # HTML is autoescaped; the text part is not.
    assert "<p>Hi Jane &lt;3, your code is <b>1234</b>.</p>" in html


async def test_sent_event_is_published_with_its_fields(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """After sending, accepted and sent events appear on gateway.events with routing keys."""
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("job-ev", campaign_id="spring"))

    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "job-ev"))
    by_status = {e["status"]: e for e in events if e["message_id"] == "job-ev"}
    assert list(by_status) == ["accepted", "sent"]
    sent = by_status["sent"]
    assert sent["_key"] == "message.sent"
    assert sent["channel"] == "email"
    assert sent["kind"] == "promotional"
    assert sent["campaign_id"] == "spring"
    assert sent["timestamp"].endswith("Z")
    assert "reason" not in sent


async def test_same_job_published_twice_is_delivered_once(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool
) -> None:
    """Idempotency by id: a second publish of the same job sends nothing more."""
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("job-dup"))
    await smtp_server.wait_for(1)
    await amqp.publish(email_job("job-dup"))
    await amqp.publish(email_job("job-after"))  # a marker: once it is out, the duplicate was seen
    await smtp_server.wait_for(2)
    await asyncio.sleep(0.2)
    assert len(smtp_server.to("jane@example.com")) == 2
    ids = [r.message["X-Gateway-Message-Id"] for r in smtp_server.received]
    assert sorted(ids) == ["job-after", "job-dup"]
    attempts = await pg_pool.fetchval("SELECT attempts FROM messages WHERE id = 'job-dup'")
    assert attempts == 1


async def test_garbage_goes_to_dead_letter_and_next_job_still_goes_out(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """Invalid JSON and schema violations land in gateway.dead with a reason; the consumer goes on."""
    await start_gateway(settings_for(smtp_server, max_job_bytes=2048))
    await amqp.publish(b"\x00\xffnot json at all")
    await amqp.publish({"id": "bad-1", "channel": "fax", "to": {"address": "x"}})
    await amqp.publish(email_job("big", data={"pad": "x" * 4096}))
    await amqp.publish(email_job("good-after-garbage"))

    [received] = await smtp_server.wait_for(1)
    assert received.message["X-Gateway-Message-Id"] == "good-after-garbage"
    dead = await amqp.dead_letters(3)
    reasons = sorted(m.headers["x-gateway-error"] for m in dead)  # type: ignore[misc]
    assert reasons[0].startswith("body of ") and "exceeds the limit of 2048" in reasons[0]
    assert reasons[1].startswith("channel: Input should be 'email', 'sms' or 'push'")
    assert reasons[2].startswith("invalid JSON")
    assert {m.body for m in dead} >= {b"\x00\xffnot json at all"}


async def test_smtp_4xx_is_retried_then_succeeds(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A 451 reply defers the message with backoff; the scheduler re-queues it until it is sent."""
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("job-4xx", to="tempfail-2@example.com"))

    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "job-4xx"))
    assert statuses(events, "job-4xx") == ["accepted", "deferred", "deferred", "sent"]
    deferred = [e for e in events if e["status"] == "deferred"]
    assert deferred[0]["reason"].startswith("recipient refused: 451")
    assert [e["attempt"] for e in deferred] == [1, 2]
    assert all(e["until"] > e["timestamp"] for e in deferred)
    assert smtp_server.attempts["tempfail-2@example.com"] == 3
    assert len(smtp_server.to("tempfail-2@example.com")) == 1


async def test_4xx_until_max_attempts_fails(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A message that keeps getting 4xx fails after max_attempts with the reason."""
    await start_gateway(settings_for(smtp_server, max_attempts=2))
    await amqp.publish(email_job("job-give-up", to="tempfail-9@example.com"))

    events = await amqp.wait_events(lambda ev: "failed" in statuses(ev, "job-give-up"))
    assert statuses(events, "job-give-up") == ["accepted", "deferred", "failed"]
    assert events[-1]["reason"].endswith("(gave up after 2 attempts)")


async def test_smtp_5xx_fails_for_good(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A 550 reply fails the message at once: no retry, reason recorded and published."""
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("job-5xx", to="reject@example.com"))

    events = await amqp.wait_events(lambda ev: "failed" in statuses(ev, "job-5xx"))
    failed = events[-1]
    assert failed["_key"] == "message.failed"
    assert failed["reason"].startswith("recipient refused: 550")
    await asyncio.sleep(0.3)
    assert smtp_server.attempts["reject@example.com"] == 1


async def test_header_injection_fails_and_sends_nothing(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A subject that renders to a CR/LF header value fails the message before any SMTP traffic."""
    await start_gateway(settings_for(smtp_server))
    job = email_job("job-inject")
    job["data"]["name"] = "Jane\r\nBcc: x@evil.example"
    await amqp.publish(job)
    await amqp.publish(email_job("job-clean", to="clean@example.com"))

    events = await amqp.wait_events(
        lambda ev: "failed" in statuses(ev, "job-inject") and "sent" in statuses(ev, "job-clean")
    )
    failed = next(e for e in events if e["message_id"] == "job-inject" and e["status"] == "failed")
    assert failed["reason"] == "refused: header Subject contains a line break"
    assert [r.rcpt_tos for r in smtp_server.received] == [["clean@example.com"]]


async def test_template_error_fails_that_message_only(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A missing variable or a sandbox escape fails its message with the reason; others go out."""
    await start_gateway(settings_for(smtp_server))
    await amqp.publish(email_job("job-missing", data={"name": "x"}))
    escape = email_job("job-escape")
    escape["content"]["text"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    await amqp.publish(escape)
    await amqp.publish(email_job("job-fine", to="fine@example.com"))

    events = await amqp.wait_events(
        lambda ev: all(s in statuses(ev, i) for s, i in
                       [("failed", "job-missing"), ("failed", "job-escape"), ("sent", "job-fine")])
    )
    reasons = {e["message_id"]: e["reason"] for e in events if e["status"] == "failed"}
    assert reasons["job-missing"] == "template error in html: 'code' is undefined"
    assert "template" in reasons["job-escape"] and "__class__" in reasons["job-escape"]
    assert [r.rcpt_tos for r in smtp_server.received] == [["fine@example.com"]]


async def test_send_at_in_future_waits_then_sends(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A job with a future send_at is deferred until then, through the durable scheduler."""
    await start_gateway(settings_for(smtp_server))
    send_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    await amqp.publish(email_job("job-later", send_at=send_at.isoformat()))

    events = await amqp.wait_events(lambda ev: "deferred" in statuses(ev, "job-later"))
    assert smtp_server.received == []
    assert events[-1]["reason"] == "send_at is in the future"
    events = await amqp.wait_events(lambda ev: "sent" in statuses(ev, "job-later"))
    sent = next(e for e in events if e["status"] == "sent")
    assert datetime.fromisoformat(sent["timestamp"]) >= send_at
    assert len(smtp_server.received) == 1


async def test_expired_job_is_not_sent(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A job whose expires_at has passed is recorded expired and never sent."""
    await start_gateway(settings_for(smtp_server))
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    await amqp.publish(email_job("job-old", expires_at=past.isoformat()))
    await amqp.publish(email_job("job-now", to="now@example.com"))

    events = await amqp.wait_events(
        lambda ev: "expired" in statuses(ev, "job-old") and "sent" in statuses(ev, "job-now")
    )
    expired = next(e for e in events if e["status"] == "expired")
    assert expired["reason"] == "expires_at passed before sending"
    assert [r.rcpt_tos for r in smtp_server.received] == [["now@example.com"]]


async def test_smtp_connections_are_reused(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """Fifty emails go over at most smtp_pool_size connections."""
    await start_gateway(settings_for(smtp_server, smtp_pool_size=2))
    for i in range(50):
        await amqp.publish(email_job(f"job-pool-{i}", to=f"user{i}@example.com"))
    await smtp_server.wait_for(50)
    assert smtp_server.sessions <= 2
