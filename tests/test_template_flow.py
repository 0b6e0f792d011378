"""Stored templates through the whole pipeline, and one-click unsubscribe end to end."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import asyncpg

from tests.conftest import API_TOKEN, Amqp
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import statuses

WELCOME = {
    "email": {"subject": "Welcome, {{ user.first_name }}",
              "html": "<p>Plan: <b>{{ plan }}</b> {{ note }}</p>"},
    "sms": {"body": "Hi {{ user.first_name }}, code {{ code }}"},
    "locales": {"pt": {"sms": {"body": "Olá {{ user.first_name }}, código {{ code }}"}},
                "pt-BR": {"sms": {"body": "Oi {{ user.first_name }}, código {{ code }} 🎉"}}},
    "defaults": {"plan": "Free", "note": "", "user": {"first_name": "there"}},
}


async def _api(gateway: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, f"http://127.0.0.1:{gateway.port}{path}", json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response:
            return response.status, await response.json(content_type=None)


def template_job(job_id: str, to: dict[str, Any], channel: str = "email", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "channel": channel, "to": to, "template": "welcome", **extra}


async def test_email_from_a_stored_template_with_user_attributes_and_defaults(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """A template job renders job data over user attributes over defaults, HTML autoescaped."""
    gateway = await start_gateway(settings_for(smtp_server))
    assert (await _api(gateway, "PUT", "/v1/templates/welcome", WELCOME))[0] == 201
    await pg_pool.execute(
        "INSERT INTO users (id, attributes) VALUES ('ana', '{\"first_name\": \"Ana\"}')"
    )
    await pg_pool.execute(
        "INSERT INTO endpoints (user_id, channel, address) VALUES ('ana', 'email', 'ana@example.com')"
    )
    await amqp.publish(template_job("tpl-1", {"user_id": "ana"}, data={"note": "<script>x</script>"}))
    await amqp.publish(template_job("tpl-2", {"address": "bob@example.com"}, data={"plan": "Pro"}))
    events = await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, "tpl-1") and "sent" in statuses(ev, "tpl-2")
    )
    by_to = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    assert by_to["ana@example.com"]["Subject"] == "Welcome, Ana"
    html = by_to["ana@example.com"].get_body(preferencelist=("html",)).get_content()
    assert "<b>Free</b> &lt;script&gt;x&lt;/script&gt;" in html
    assert by_to["bob@example.com"]["Subject"] == "Welcome, there"
    sent = next(e for e in events if e.get("message_id") == "tpl-2" and e["status"] == "sent")
    assert (sent["template"], sent["template_version"]) == ("welcome", 1)


async def test_pinned_version_and_missing_variable(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """template_version pins an old version; a variable with no value fails naming it."""
    gateway = await start_gateway(settings_for(smtp_server))
    await _api(gateway, "PUT", "/v1/templates/welcome", WELCOME)
    v2 = {**WELCOME, "email": {"subject": "v2 {{ missing_var }}", "text": "x"}}
    assert (await _api(gateway, "PUT", "/v1/templates/welcome", v2))[1]["version"] == 2
    await amqp.publish(template_job("pinned", {"address": "a@example.com"}, template_version=1))
    await amqp.publish(template_job("latest", {"address": "b@example.com"}))
    await amqp.publish(template_job("nope", {"address": "c@example.com"}, template_version=9))
    events = await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, "pinned") and "failed" in statuses(ev, "latest")
        and "failed" in statuses(ev, "nope")
    )
    reasons = {e["message_id"]: e["reason"] for e in events if e["status"] == "failed"}
    assert "'missing_var' is undefined" in reasons["latest"] and "v2" in reasons["latest"]
    assert reasons["nope"] == "template 'welcome' has no version 9"
    assert [r.message["Subject"] for r in smtp_server.received] == ["Welcome, there"]


async def test_each_job_gets_the_version_that_is_latest_when_it_is_claimed(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """Latest is read with each claim, though bodies are cached: a new version applies from the
    next job on, a pinned job keeps its version, and a deleted template is unknown at once."""
    gateway = await start_gateway(settings_for(smtp_server))
    await _api(gateway, "PUT", "/v1/templates/welcome", WELCOME)
    await amqp.publish(template_job("first", {"address": "a@example.com"}))
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "first"))
    v2 = {**WELCOME, "email": {"subject": "Second edition for {{ user.first_name }}", "text": "x"}}
    assert (await _api(gateway, "PUT", "/v1/templates/welcome", v2))[1]["version"] == 2
    await amqp.publish(template_job("second", {"address": "b@example.com"}))
    await amqp.publish(template_job("pinned", {"address": "c@example.com"}, template_version=1))
    await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, "second") and "sent" in statuses(ev, "pinned"))
    assert (await _api(gateway, "DELETE", "/v1/templates/welcome"))[0] == 204
    await amqp.publish(template_job("after-delete", {"address": "d@example.com"}))
    events = await amqp.wait_events(lambda ev: "failed" in statuses(ev, "after-delete"))
    subjects = {r.rcpt_tos[0]: r.message["Subject"] for r in smtp_server.received}
    assert subjects == {"a@example.com": "Welcome, there",
                        "b@example.com": "Second edition for there",
                        "c@example.com": "Welcome, there"}
    sent = {e["message_id"]: e["template_version"] for e in events if e["status"] == "sent"}
    assert sent == {"first": 1, "second": 2, "pinned": 1}
    failed = next(e for e in events if e["message_id"] == "after-delete" and e["status"] == "failed")
    assert failed["reason"] == "unknown template 'welcome'"


async def test_sms_template_locale_fallback_and_segments(
    amqp: Amqp, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool,
) -> None:
    """A pt-PT user gets the pt body; pt-BR gets its own, in UCS-2; the sent event counts segments."""
    from tests.fake_twilio import FakeTwilio

    twilio = FakeTwilio()
    await twilio.start()
    try:
        gateway = await start_gateway(settings_for(
            twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN, twilio_base_url=twilio.url,
            sms_from="+14155550199", sms_rate_per_second=1000,
        ))
        await _api(gateway, "PUT", "/v1/templates/welcome", WELCOME)
        for user, locale, number in (("pt1", "pt-PT", "+447911123451"), ("br1", "pt-BR", "+447911123452")):
            await pg_pool.execute(
                "INSERT INTO users (id, locale, attributes) VALUES ($1, $2, '{\"first_name\": \"Zé\"}')",
                user, locale,
            )
            await pg_pool.execute(
                "INSERT INTO endpoints (user_id, channel, address) VALUES ($1, 'sms', $2)", user, number
            )
            await amqp.publish(template_job(f"sms-{user}", {"user_id": user}, channel="sms", data={"code": "77"}))
        await amqp.publish(template_job("sms-en", {"address": "+447911123453"}, channel="sms",
                                        data={"code": "77"}))
        events = await amqp.wait_events(
            lambda ev: all("sent" in statuses(ev, i) for i in ("sms-pt1", "sms-br1", "sms-en"))
        )
    finally:
        await twilio.stop()
    bodies = {r.form["To"]: r.form["Body"] for r in twilio.received}
    assert bodies == {
        "+447911123451": "Olá Zé, código 77",
        "+447911123452": "Oi Zé, código 77 🎉",
        "+447911123453": "Hi there, code 77",
    }
    sent = {e["message_id"]: e for e in events if e["status"] == "sent"}
    assert (sent["sms-br1"]["encoding"], sent["sms-br1"]["segments"]) == ("UCS-2", 1)
    assert (sent["sms-en"]["encoding"], sent["sms-en"]["segments"]) == ("GSM-7", 1)


async def test_one_click_unsubscribe_end_to_end(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """A promotional email's List-Unsubscribe link, POSTed once, suppresses the next promotional email."""
    gateway = await start_gateway(settings_for(
        smtp_server, public_url="https://gw.example.com", unsubscribe_secret="s" * 32,
        unsubscribe_mailto="unsubscribe@example.com",
    ))
    await _api(gateway, "PUT", "/v1/templates/welcome", WELCOME)
    await amqp.publish(template_job("promo-1", {"address": "Reader@Example.com"}))
    await amqp.publish(template_job("receipt-1", {"address": "reader@example.com"}), "send.transactional")
    await amqp.wait_events(lambda ev: "sent" in statuses(ev, "promo-1") and "sent" in statuses(ev, "receipt-1"))
    by_id = {r.message["X-Gateway-Message-Id"]: r.message for r in smtp_server.received}
    assert "List-Unsubscribe" not in by_id["receipt-1"]  # transactional mail carries none
    promo = by_id["promo-1"]
    assert promo["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.search(r"<(https://gw\.example\.com/v1/unsubscribe/[^>]+)>", promo["List-Unsubscribe"])
    assert link is not None and "<mailto:unsubscribe@example.com>" in promo["List-Unsubscribe"]
    path = link.group(1).removeprefix("https://gw.example.com")

    async with aiohttp.ClientSession() as http:  # the mailbox provider, with no bearer token
        async with http.post(f"http://127.0.0.1:{gateway.port}{path}",
                             data={"List-Unsubscribe": "One-Click"}, allow_redirects=False) as response:
            assert response.status == 200

    await amqp.publish(template_job("promo-2", {"address": "reader@example.com"}))
    events = await amqp.wait_events(lambda ev: "suppressed" in statuses(ev, "promo-2"))
    assert events[-1]["reason"] == "opted_out"
    assert len(smtp_server.received) == 2
