"""GET /metrics: what a gateway started in process counts as messages go through it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.loop_lag import watch_loop_lag
from gateway.metrics import Children, Metrics, suppression_reason
from gateway.outcomes import Outcome, Status
from tests.conftest import Amqp
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job, statuses
from tests.test_inbound import NUMBER, PUBLIC_URL, register, text_twilio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    amqp: Amqp, smtp_server: RecordingSmtp, twilio: FakeTwilio, settings_for: Any,
    start_gateway: Any,
) -> Gateway:
    """Consumer and HTTP API: email to the local SMTP server, SMS webhooks from fake Twilio."""
    started: Gateway = await start_gateway(settings_for(
        smtp_server, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=twilio.url, sms_from=NUMBER, public_url=PUBLIC_URL,
    ))
    return started


async def scrape(gateway: Gateway) -> tuple[str, Samples]:
    """GET /metrics without a token: its content type and every sample by (name, labels)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gateway.port}/metrics") as response:
            assert response.status == 200
            content_type, text = response.headers["Content-Type"], await response.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_messages_suppressions_and_provider_requests_are_counted_with_their_labels(
    gateway: Gateway, amqp: Amqp, pg_pool: asyncpg.Pool
) -> None:
    """Sent, failed and suppressed messages, provider requests and errors, and end-to-end
    latency show on /metrics with channel, kind, status, provider and reason labels."""
    await pg_pool.execute(
        "INSERT INTO opt_outs (channel, address, source)"
        " VALUES ('email', 'gone@example.com', 'api')"
    )
    for n in range(3):
        await amqp.publish(email_job(f"otp-{n}", to=f"user{n}@example.com"), "send.transactional")
    await amqp.publish(email_job("promo-ok"))
    await amqp.publish(email_job("promo-bad", to="reject@example.com"))
    await amqp.publish(email_job("promo-gone", to="gone@example.com"))
    final = {"sent", "failed", "suppressed"}
    ids = ["otp-0", "otp-1", "otp-2", "promo-ok", "promo-bad", "promo-gone"]
    await amqp.wait_events(lambda ev: all(final & set(statuses(ev, i)) for i in ids))

    content_type, samples = await scrape(gateway)
    assert content_type.startswith("text/plain")
    messages = "gateway_messages_total"
    assert value(samples, messages, channel="email", kind="transactional", status="sent") == 3
    assert value(samples, messages, channel="email", kind="promotional", status="sent") == 1
    assert value(samples, messages, channel="email", kind="promotional", status="failed") == 1
    assert value(samples, messages, channel="email", kind="promotional", status="suppressed") == 1
    assert value(samples, "gateway_suppressions_total", channel="email", reason="opted_out") == 1
    # Five sends reached the SMTP server; the opted-out address was never tried.
    assert value(samples, "gateway_provider_request_seconds_count", provider="email") == 5
    errors = "gateway_provider_errors_total"
    assert value(samples, errors, provider="email", reason="permanent") == 1
    latency = "gateway_delivery_latency_seconds_count"
    assert value(samples, latency, channel="email", kind="transactional") == 3
    assert value(samples, latency, channel="email", kind="promotional") == 1
    slowest = value(samples, "gateway_delivery_latency_seconds_bucket",
                    channel="email", kind="transactional", le="30.0")
    assert slowest == 3


async def test_a_transient_refusal_is_an_error_and_the_retry_a_success(
    gateway: Gateway, amqp: Amqp
) -> None:
    """A 451 then an accept count as one transient error and two requests; the message once."""
    await amqp.publish(email_job("retried", to="tempfail-1@example.com"), "send.transactional")
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "retried"))

    _, samples = await scrape(gateway)
    errors = "gateway_provider_errors_total"
    assert value(samples, errors, provider="email", reason="transient") == 1
    assert value(samples, "gateway_provider_request_seconds_count", provider="email") == 2
    assert value(samples, "gateway_messages_total",
                 channel="email", kind="transactional", status="sent") == 1


async def test_inbound_messages_are_counted_by_action_and_retries_are_not(
    gateway: Gateway
) -> None:
    """Inbound SMS count once per provider message id, labelled with provider and action."""
    await register(gateway)
    await text_twilio(gateway, "hello there", sid="SM" + "1" * 32)
    await text_twilio(gateway, "hello there", sid="SM" + "1" * 32)  # the webhook retried
    await text_twilio(gateway, "STOP", sid="SM" + "2" * 32)

    _, samples = await scrape(gateway)
    inbound = "gateway_inbound_messages_total"
    assert value(samples, inbound, provider="twilio", action="none") == 1
    assert value(samples, inbound, provider="twilio", action="opt_out") == 1


async def test_gauges_show_the_deferred_backlog_and_the_jobs_in_flight(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """The deferred gauge counts deferred rows (read by the scheduler); in-flight is 0 when idle."""
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    await pg_pool.execute(
        "INSERT INTO messages (id, channel, kind, status, job, due_at)"
        " SELECT 'deferred-' || n, 'email', 'promotional', 'deferred', '{}', $1"
        " FROM generate_series(1, 7) AS n",
        later,
    )
    gateway = await start_gateway(settings_for(smtp_server))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:  # the scheduler's first pass reads the backlog just after the start
        _, samples = await scrape(gateway)
        if value(samples, "gateway_deferred_messages") == 7 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "gateway_deferred_messages") == 7
    assert value(samples, "gateway_consumer_in_flight") == 0


async def test_each_gateway_has_its_own_registry(settings_for: Any) -> None:
    """Two gateways in one process never share a metric (no global registry)."""
    one, two = Gateway(settings_for()), Gateway(settings_for())
    one.metrics.suppressions.labels("sms", "daily_cap").inc()
    assert one.metrics.registry is not two.metrics.registry
    line = b'gateway_suppressions_total{channel="sms",reason="daily_cap"} 1.0'
    assert line in one.metrics.exposition()
    assert b"daily_cap" not in two.metrics.exposition()


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("opted_out", "opted_out"),
        ("opted_out (Twilio 21610: unsubscribed)", "opted_out"),
        ("daily_cap", "daily_cap"),
        ("campaign_cap", "campaign_cap"),
        ("something new", "other"),
        (None, "other"),
    ],
)
def test_suppression_reasons_are_bounded_labels(reason: str | None, label: str) -> None:
    """A suppression reason becomes one of a few label values, never free text."""
    assert suppression_reason(reason) == label


def test_only_final_outcomes_are_counted_and_only_sent_ones_timed() -> None:
    """Deferred outcomes are not counted; a sent one is timed from its start."""
    metrics = Metrics()
    at = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    sent = Outcome("a", "sms", "transactional", Status.sent, at)
    deferred = Outcome("b", "sms", "transactional", Status.deferred, at)
    metrics.count_outcomes([sent, deferred], {"a": at - timedelta(seconds=2), "b": at})
    text = metrics.exposition().decode()
    assert 'gateway_messages_total{channel="sms",kind="transactional",status="sent"} 1.0' in text
    assert 'status="deferred"' not in text
    assert 'gateway_delivery_latency_seconds_sum{channel="sms",kind="transactional"} 2.0' in text


def test_children_are_looked_up_once_per_label_tuple_and_count_into_the_registry() -> None:
    """A kept child is the one labels() gives, so what it counts shows at /metrics."""
    metrics = Metrics()
    children = Children(metrics.provider_errors)
    first = children("sms", "timeout")
    assert first is metrics.provider_errors.labels("sms", "timeout")
    assert children("sms", "timeout") is first
    children("sms", "timeout").inc()
    children("email", "permanent").inc(2)
    assert len(children) == 2
    text = metrics.exposition().decode()
    assert 'gateway_provider_errors_total{provider="sms",reason="timeout"} 1.0' in text
    assert 'gateway_provider_errors_total{provider="email",reason="permanent"} 2.0' in text


def test_observe_request_counts_latency_and_errors_per_provider() -> None:
    """Each provider gets its own latency series; only failed sends count as errors."""
    metrics = Metrics()
    for provider, error in [("sms", None), ("sms", "transient"), ("push:fcm", None),
                            ("sms", "transient")]:
        metrics.observe_request(provider, 0.02, error)
    text = metrics.exposition().decode()
    assert 'gateway_provider_request_seconds_count{provider="sms"} 3.0' in text
    assert 'gateway_provider_request_seconds_count{provider="push:fcm"} 1.0' in text
    assert 'gateway_provider_errors_total{provider="sms",reason="transient"} 2.0' in text
    assert 'provider="push:fcm",reason=' not in text


async def test_loop_lag_is_observed_when_the_loop_is_blocked() -> None:
    """80 ms of blocking work shows as an observation over 50 ms; quiet ticks stay under it."""
    metrics = Metrics()
    watcher = asyncio.create_task(watch_loop_lag(metrics.loop_lag, interval=0.01))
    await asyncio.sleep(0.05)  # a few quiet ticks first
    # Blocks the loop: the watcher's timer, due within 10 ms, runs at least 70 ms late.
    time.sleep(0.08)
    await asyncio.sleep(0.03)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if family.name == "gateway_event_loop_lag_seconds"
        for s in family.samples
    }
    count = samples[("gateway_event_loop_lag_seconds_count", None)]
    assert count >= 3
    under_50ms = samples[("gateway_event_loop_lag_seconds_bucket", "0.05")]
    assert count - under_50ms >= 1
    assert under_50ms >= 1
    assert samples[("gateway_event_loop_lag_seconds_sum", None)] >= 0.065
