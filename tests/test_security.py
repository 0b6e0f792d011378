"""Security: webhook signatures and limits, the template sandbox, email header injection, and
hostile-looking data that must stay plain text.

Elsewhere, not repeated here: property-based tests of job parsing (tests/test_units.py) and
keyword matching (tests/test_keywords.py); the HTTP API fuzzed from its OpenAPI document
(tests/test_openapi.py); masking of addresses in logs (tests/test_logging.py), and the
session-wide check that no secret or unmasked address reaches a log line (tests/conftest_logs.py).
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twilio.request_validator import RequestValidator

import gateway.sandbox
from gateway.api_inbound import MAX_WEBHOOK_BYTES
from gateway.app import Gateway
from gateway.errors import MessageFailed
from gateway.render import Renderer
from gateway.unsubscribe import ONE_CLICK, unsubscribe_token
from tests.conftest import API_TOKEN, Amqp
from tests.conftest_logs import register_address, register_secret
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN
from tests.smtp_server import RecordingSmtp
from tests.test_email_flow import email_job, statuses
from tests.test_inbound import (
    PUBLIC_URL,
    SENDER,
    TELNYX_KEY,
    TELNYX_PUBLIC,
    VONAGE_SECRET,
    register,
    telnyx_body,
    twilio_params,
    vonage_params,
)

pytestmark = pytest.mark.security

UNSUBSCRIBE_SECRET = "unsubscribe-secret-security-" + "k" * 8
MAX_REQUEST_BYTES = 64 * 1024
register_secret(UNSUBSCRIBE_SECRET)
register_address("evil@attacker.example", "victim@example.com", "ana.sql@example.com")


# -- webhooks: missing, wrong, stale and replayed signatures, oversized bodies -----------------


@dataclass(frozen=True)
class Request:
    """One webhook request as the provider would send it."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _form(params: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(params).encode()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def twilio_inbound(*, text: str = "hello", sig: str = "good") -> Request:
    path = "/v1/inbound/sms/twilio"
    params = twilio_params(text)
    signed = RequestValidator(AUTH_TOKEN if sig == "good" else "another-token").compute_signature(
        PUBLIC_URL + path, params
    )
    headers = {**_FORM, **({} if sig == "missing" else {"X-Twilio-Signature": signed})}
    return Request(path, _form(params), headers)


def telnyx_inbound(*, text: str = "hello", sig: str = "good", age: int = 0) -> Request:
    body = telnyx_body(text)
    stamp = str(int(time.time()) - age)
    key = TELNYX_KEY if sig == "good" else Ed25519PrivateKey.generate()
    signature = base64.b64encode(key.sign(stamp.encode() + b"|" + body)).decode()
    headers = {"Content-Type": "application/json"}
    if sig != "missing":
        headers |= {"telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp}
    return Request("/v1/inbound/sms/telnyx", body, headers)


def vonage_inbound(*, text: str = "hello", sig: str = "good", age: int = 0) -> Request:
    secret = VONAGE_SECRET if sig == "good" else "another-secret"
    params = vonage_params(text, timestamp=int(time.time()) - age, secret=secret)
    if sig == "missing":
        del params["sig"]
    return Request("/v1/inbound/sms/vonage", _form(params), _FORM)


STATUS_SID = "SM" + "5" * 32


def twilio_status(*, text: str = "", sig: str = "good") -> Request:
    path = "/v1/status/twilio"
    params = {"MessageSid": STATUS_SID, "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID,
              "ApiVersion": "2010-04-01"}
    if text:
        params["Padding"] = text  # Twilio adds parameters as it likes: all are signed
    signed = RequestValidator(AUTH_TOKEN if sig == "good" else "another-token").compute_signature(
        PUBLIC_URL + path, params
    )
    headers = {**_FORM, **({} if sig == "missing" else {"X-Twilio-Signature": signed})}
    return Request(path, _form(params), headers)


def unsubscribe(*, text: str = "", sig: str = "good") -> Request:
    secret = UNSUBSCRIBE_SECRET if sig == "good" else "another-secret-of-16+"
    token = unsubscribe_token(secret, "victim@example.com")
    if sig == "missing":
        token = token.split(".")[0]  # the address without its mac
    body = f"{ONE_CLICK}&Padding={text}".encode() if text else ONE_CLICK.encode()
    return Request(f"/v1/unsubscribe/{token}", body, _FORM)


@dataclass(frozen=True)
class Webhook:
    """An endpoint, how to build its requests, how big a body it refuses, and what one
    processed request leaves in the database."""

    name: str
    build: Callable[..., Request]
    limit: int
    processed: str
    stale: bool = False


WEBHOOKS = [
    Webhook("twilio inbound", twilio_inbound, MAX_WEBHOOK_BYTES,
            "SELECT count(*) FROM inbound_messages"),
    Webhook("telnyx inbound", telnyx_inbound, MAX_WEBHOOK_BYTES,
            "SELECT count(*) FROM inbound_messages", stale=True),
    Webhook("vonage inbound", vonage_inbound, MAX_WEBHOOK_BYTES,
            "SELECT count(*) FROM inbound_messages", stale=True),
    Webhook("twilio status", twilio_status, MAX_REQUEST_BYTES,
            "SELECT count(*) FROM provider_receipts"),
    Webhook("unsubscribe", unsubscribe, MAX_REQUEST_BYTES, "SELECT count(*) FROM opt_outs"),
]
CASES = [
    pytest.param(hook, case, id=f"{hook.name}-{case}")
    for hook in WEBHOOKS
    for case in ("missing", "wrong", "stale", "replayed", "oversized")
    if case != "stale" or hook.stale
]


@pytest.fixture
async def webhooks(amqp: Amqp, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool) -> Gateway:
    """An HTTP-only gateway with every webhook's secret, our number registered and one sent SMS
    (for status callbacks)."""
    settings = settings_for(
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
        twilio_base_url="http://127.0.0.1:9", sms_from="+14155550199", public_url=PUBLIC_URL,
        telnyx_public_key=TELNYX_PUBLIC, vonage_signature_secret=VONAGE_SECRET,
        unsubscribe_secret=UNSUBSCRIBE_SECRET, max_request_bytes=MAX_REQUEST_BYTES,
    )
    gateway: Gateway = await start_gateway(settings, consume=False, http=True)
    await register(gateway)
    # provider_receipts is not among the tables the clean fixture empties.
    await pg_pool.execute("DELETE FROM provider_receipts WHERE provider_message_id = $1", STATUS_SID)
    await pg_pool.execute(
        "INSERT INTO messages (id, channel, kind, status, job, recipient, provider_message_id)"
        " VALUES ('sms-sent', 'sms', 'transactional', 'sent', '{}'::jsonb, $1, $2)",
        SENDER, STATUS_SID,
    )
    return gateway


async def send(gateway: Gateway, request: Request) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(
        f"http://127.0.0.1:{gateway.port}{request.path}", data=request.body,
        headers=request.headers,
    ) as response:
        return response.status, await response.text()


@pytest.mark.parametrize(("hook", "case"), CASES)
async def test_webhooks_refuse_bad_signatures_replays_and_oversized_bodies(
    hook: Webhook, case: str, webhooks: Gateway, pg_pool: asyncpg.Pool
) -> None:
    """A missing, wrong or stale signature is 403 and a body over the limit 413, with nothing
    processed; the same signed request twice is processed once."""
    if case == "replayed":
        request = hook.build()
        first, second = await send(webhooks, request), await send(webhooks, request)
        assert first[0] in (200, 204), first
        assert second[0] in (200, 204, 403, 409), second  # processed once, or refused
        assert await pg_pool.fetchval(hook.processed) == 1
        return
    if case == "oversized":
        status, text = await send(webhooks, hook.build(text="x" * hook.limit))
        assert status == 413, (status, text[:200])
        assert orjson.loads(text)["error"]["code"] == "payload_too_large"
    else:
        request = hook.build(sig=case) if case != "stale" else hook.build(age=400)
        status, text = await send(webhooks, request)
        assert (status, orjson.loads(text)["error"]["code"]) == (403, "invalid_signature"), text
    assert await pg_pool.fetchval(hook.processed) == 0


# -- the template sandbox -----------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ request }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{% for x in range(10**9) %}{% endfor %}",
    "{{ 'a' * 10**9 }}",
    "{{ [0] * 10**9 }}",
    "{{ 2 ** 100000 }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{a.__class__}'.format_map({'a': 1}) }}",
    "{{ 'x'|attr('__class__') }}",
    "{{ ('x'|attr('__class__'))|attr('__mro__') }}",
    "{{ dict.mro() }}",
    "{% set ns = namespace(a=1) %}{{ ns.__init__ }}",
    "{{ [].append(1) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends '/etc/passwd' %}",
    "{{ undefined_variable }}",
    "{% if %}",
]
# What an escaped object looks like when rendered: none of it may reach a reason.
LEAKS = ("<class", "<function", "<module", "<built-in", "<bound", " at 0x", "environ(",
         "/bin/", "root:", "uid=")


@pytest.mark.parametrize("is_html", [False, True], ids=["text", "html"])
@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_fail_the_message_without_leaking(source: str, is_html: bool) -> None:
    """Each known Jinja2 escape fails with MessageFailed, one line, no internals, quickly."""
    started = time.monotonic()
    with pytest.raises(MessageFailed) as failed:
        Renderer().render(source, {"name": "x"}, part="body", is_html=is_html)
    reason = failed.value.reason
    assert time.monotonic() - started < 2
    assert reason.startswith(("template error in body", "template refused in body",
                              "template syntax error in body"))
    assert "\n" not in reason and len(reason) <= 1000
    assert not [leak for leak in LEAKS if leak in reason], reason


def test_data_is_never_rendered_as_a_template() -> None:
    """Template syntax inside data stays literal text: no second rendering."""
    data = {"name": "{{ config }}{% for x in range(10) %}x{% endfor %}"}
    assert Renderer().render("Hi {{ name }}", data, part="subject", is_html=False) == (
        "Hi " + data["name"]
    )


@pytest.mark.parametrize(
    "source",
    ["{{ 'a'.ljust(10**7) }}", "{{ '{:>10000000}'.format(1) }}", "{{ '%10000000d' % 1 }}",
     "{{ 'a'.center(10**7) }}", "{{ lipsum(5000) }}",
     "{{ '%(a)1000000000d' % {'a': 1} }}", "{{ '%.1000000000f' % 1 }}",
     "{{ '%*d'|format(10**9, 1) }}", "{{ '{:{}}'.format(1, 10**9) }}",
     "{{ 'a'|center(10**9) }}", "{{ 'a'|indent(10**9, true) }}", "{{ [1]|batch(10**9, 0)|list }}",
     "{{ [1]|slice(10**7)|list }}", "{{ range(100000)|join('x' * 100000) }}",
     "{{ ('x' * 100000)|replace('', 'y' * 100000) }}", "{{ '%1000000000d'|format(1) }}",
     "{{ ('x ' * 50000)|wordwrap(1, wrapstring='y' * 100000) }}", "{{ [1]|tojson(10**9) }}",
     "{{ ('x' * 100000).replace('', 'y' * 100000) }}", "{{ ('y' * 100000).join('x' * 100000) }}",
     "{{ ('x' * 100000).translate({120: 'y' * 100000}) }}", "{{ ((10**64)**64)**64 }}"],
)
def test_templates_cannot_build_huge_values_by_padding(source: str) -> None:
    """Padding or formatting a string to millions of characters, or a filter or str method
    asked to build a value that large, is refused like multiplying it: before it is built."""
    with pytest.raises(MessageFailed):
        Renderer().render(source, {}, part="body", is_html=False)


def test_nested_loops_are_bounded() -> None:
    """Nested loops of 10**7 iterations in all are refused, not run (10**10 would block the
    process's event loop for minutes)."""
    source = "{% for a in range(10000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"
    with pytest.raises(MessageFailed):
        Renderer().render(source, {}, part="body", is_html=False)


# Each would run for minutes, or fill the memory, without the render's budget.
EXPENSIVE = {
    "loops in a macro": "{% macro m() %}{% for a in range(1000) %}{% for b in range(1000) %}"
    "{% endfor %}{% endfor %}{% endmacro %}{{ m() }}",
    "loops over lists": "{% for a in range(1000)|list %}{% for b in range(1000)|list %}"
    "{% endfor %}{% endfor %}",
    "a loop over data, in a loop": "{% for a in items %}{% for b in items %}{% endfor %}"
    "{% endfor %}",
    "a loop's filter": "{% for a in range(1000) %}{% for b in range(1000) if b < 0 %}"
    "{% endfor %}{% endfor %}",
    "a macro calling itself twice": "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}"
    "{% endif %}{% endmacro %}{{ f(40) }}",
    "a recursive loop": "{% for x in [1] recursive %}{% if loop.depth < 6 %}{{ loop(range(100)) }}"
    "{% endif %}{% endfor %}",
    "a call block calling its caller": "{% macro twice() %}{{ caller() }}{{ caller() }}"
    "{% endmacro %}" + "{% call twice() %}" * 20 + "x" + "{% endcall %}" * 20,
    "a macro calling itself": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "a block calling itself": "{% block b %}{{ self.b() }}{% endblock %}",
    "~ doubling": "{% set a = 'x' * 100000 %}" + "{% set a = a ~ a %}" * 30,
    "+ doubling": "{% set a = [0] * 100000 %}" + "{% set a = a + a %}" * 30,
    "doubling in a loop": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "a huge output": "{% set a = 'x' * 100000 %}{% for i in range(100000) %}{{ a }}{% endfor %}",
    "a huge macro buffer": "{% macro m(a) %}{% for i in range(100000) %}{{ a }}{% endfor %}"
    "{% endmacro %}{% set x = m('x' * 100000) %}",
    "a huge set block": "{% set x %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}"
    "{% endset %}",
    "a huge filter block": "{% filter upper %}{% for i in range(100000) %}{{ 'x' * 100000 }}"
    "{% endfor %}{% endfilter %}",
    "a huge recursive loop": "{% for x in [1] recursive %}{% if loop.depth < 2 %}"
    "{{ loop(range(50000)) }}{% else %}{{ 'x' * 100000 }}{% endif %}{% endfor %}",
    "a macro growing its output": "{% macro f(n) %}{% if n > 0 %}{{ 'x' * 100000 }}{{ f(n - 1) }}"
    "{% endif %}{% endmacro %}{{ f(100) }}",
    "a block growing its output": "{% set ns = namespace(n=0) %}{% block b %}"
    "{% set ns.n = ns.n + 1 %}{{ 'x' * 100000 }}{% if ns.n < 100 %}{{ self.b() }}{% endif %}"
    "{% endblock %}",
    "a huge output without a loop": "{% set a = 'x' * 100000 %}" + "{{ a }}" * 6,
    "squaring in a loop": "{% set ns = namespace(n=10**64) %}{% for i in range(30) %}"
    "{% set ns.n = ns.n * ns.n %}{% endfor %}",
}


@pytest.mark.parametrize("source", list(EXPENSIVE.values()), ids=list(EXPENSIVE))
def test_expensive_templates_fail_the_message_quickly(source: str) -> None:
    """Nested loops, recursion, doubling and huge outputs fail the message in a second or so
    (the time budget), with a one-line reason."""
    started = time.monotonic()
    with pytest.raises(MessageFailed) as failed:
        Renderer().render(source, {"items": list(range(1000))}, part="body", is_html=False)
    assert time.monotonic() - started < 2
    assert failed.value.reason.startswith(("template refused in body", "template error in body"))
    assert "\n" not in failed.value.reason


def test_a_render_over_its_time_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A render still running after MAX_RENDER_SECONDS is refused at its next step."""
    monkeypatch.setattr(gateway.sandbox, "MAX_RENDER_SECONDS", -1.0)
    with pytest.raises(MessageFailed, match="template refused in body: .* to render"):
        Renderer().render("{% for i in range(2) %}{% endfor %}", {}, part="body", is_html=False)


def test_the_budget_is_per_render() -> None:
    """Steps are counted per render, not per loop and not per renderer: 90,000 of them pass,
    as often as asked, and the same in two loops one after the other is refused."""
    renderer = Renderer()
    source = "{% for a in range(300) %}{% for b in range(299) %}{% endfor %}{% endfor %}"
    for _ in range(3):
        assert renderer.render(source, {}, part="body", is_html=False) == ""
    with pytest.raises(MessageFailed, match="steps"):
        renderer.render(source * 2, {}, part="body", is_html=False)


def test_templates_that_loop_over_real_data_still_render() -> None:
    """A thousand items in an HTML table, rows built up in a namespace, a macro per row and a
    recursive menu all render as before."""
    items = [{"name": f"item {i}", "price": i, "children": [{"name": "sub", "children": []}]}
             for i in range(1000)]
    renderer = Renderer()
    table = ("{% macro row(i) %}<tr><td>{{ i.name }}</td><td>{{ i.price }}</td></tr>{% endmacro %}"
             "<table>{% for i in items %}{{ row(i) }}{% endfor %}</table>")
    html = renderer.render(table, {"items": items}, part="html", is_html=True)
    assert html.count("<tr>") == 1000 and "item 999" in html
    text = renderer.render(
        "{% set ns = namespace(s='') %}{% for i in items %}{% set ns.s = ns.s ~ i.name ~ '\n' %}"
        "{% endfor %}{{ ns.s|length }}", {"items": items}, part="text", is_html=False
    )
    assert text == str(sum(len(f"item {i}\n") for i in range(1000)))
    menu = renderer.render(
        "{% for i in items recursive %}{{ i.name }};{{ loop(i.children) }}{% endfor %}",
        {"items": items[:3]}, part="text", is_html=False,
    )
    assert menu == "item 0;sub;item 1;sub;item 2;sub;"


# -- email header injection ---------------------------------------------------------------------

EVIL = "Jane\r\nBcc: evil@attacker.example"


def _injections() -> list[tuple[dict[str, Any], str]]:
    """(job, the reason it must fail with) for every header the gateway fills from job data."""
    subject = [("crlf", EVIL), ("lf", "Jane\nBcc: evil@attacker.example"),
               ("cr", "Jane\rBcc: evil@attacker.example"), ("u2028", "Jane\u2028Bcc: x"),
               ("nel", "Jane\x85Bcc: x"), ("vt", "Jane\x0bBcc: x")]
    cases = [
        (email_job(f"inject-subject-{name}", data={"name": value, "code": "1"}),
         "refused: header Subject contains a line break")
        for name, value in subject
    ]
    cases.append((email_job("inject-from", **{"from": f"Shop <shop@example.org>\r\nBcc: {EVIL}"}),
                  "refused: header From contains a line break"))
    cases.append((email_job("inject-to", to="victim@example.com\r\nBcc: evil@attacker.example"),
                  "invalid email address"))
    cases.append((email_job("inject-id\u2028Bcc: x"),
                  "refused: header X-Gateway-Message-Id contains a line break"))
    cases.append(({"id": "inject-template", "channel": "email",
                   "to": {"address": "victim@example.com"}, "template": "injectable",
                   "data": {"name": EVIL}},
                  "refused: header Subject contains a line break"))
    return cases


async def api(gateway: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.request(
        method, f"http://127.0.0.1:{gateway.port}{path}", json=body
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_header_injection_from_job_data_fails_and_sends_nothing(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any
) -> None:
    """CR, LF or any other line break in the Subject (inline or a stored template's), From, To
    or message id fails that message with a clear reason; nothing reaches the SMTP server."""
    gateway = await start_gateway(settings_for(smtp_server))
    template = {"email": {"subject": "Hello {{ name }}", "text": "Hi."}}
    assert (await api(gateway, "PUT", "/v1/templates/injectable", template))[0] == 201
    cases = _injections()
    for job, _ in cases:
        await amqp.publish(job)
    await amqp.publish(email_job("after-injections", to="clean@example.com"))
    events = await amqp.wait_events(
        lambda ev: all(statuses(ev, job["id"])[-1:] == ["failed"] for job, _ in cases)
        and "sent" in statuses(ev, "after-injections")
    )
    reasons = {e["message_id"]: e["reason"] for e in events if e.get("status") == "failed"}
    assert {job["id"]: reasons[job["id"]] for job, _ in cases} == {
        job["id"]: reason for job, reason in cases
    }
    assert [r.rcpt_tos for r in smtp_server.received] == [["clean@example.com"]]


# -- hostile-looking data stays plain text -------------------------------------------------------

HOSTILE = {
    "sql": "'; DROP TABLE messages; --",
    "script": "<script>alert(1)</script>",
    "bobby": "Robert'); DELETE FROM users;--",
}


def body_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    content: str = part.get_content()
    return content


async def test_sql_and_script_looking_data_round_trips_as_plain_text(
    amqp: Amqp, smtp_server: RecordingSmtp, settings_for: Any, start_gateway: Any,
    pg_pool: asyncpg.Pool,
) -> None:
    """SQL- and script-looking values come back unchanged: in the text body (escaped in the
    HTML one), in the stored job and the API's answer, and as a user attribute rendered into a
    stored template."""
    gateway = await start_gateway(settings_for(smtp_server))
    line = " | ".join(f"{{{{ {key} }}}}" for key in HOSTILE)
    job_id = "hostile-" + HOSTILE["sql"]
    await amqp.publish({
        "id": job_id, "channel": "email", "to": {"address": "ana.sql@example.com"},
        "content": {"subject": "{{ bobby }}", "text": line, "html": f"<p>{line}</p>"},
        "data": HOSTILE,
    })
    user = {"attributes": dict(HOSTILE),
            "endpoints": [{"channel": "email", "address": "ana.sql@example.com"}]}
    status, stored_user = await api(gateway, "PUT", "/v1/users/hostile-user", user)
    assert status == 201 and stored_user["attributes"] == HOSTILE
    template = {"email": {"subject": "Attributes", "text": line.replace("{{ ", "{{ user.")}}
    assert (await api(gateway, "PUT", "/v1/templates/hostile", template))[0] == 201
    await amqp.publish({"id": "hostile-template", "channel": "email",
                        "to": {"user_id": "hostile-user"}, "template": "hostile"})
    await amqp.wait_events(
        lambda ev: "sent" in statuses(ev, job_id) and "sent" in statuses(ev, "hostile-template")
    )

    expected = " | ".join(HOSTILE.values())
    by_id = {r.message["X-Gateway-Message-Id"]: r.message for r in smtp_server.received}
    inline = by_id[job_id]
    assert inline["Subject"] == HOSTILE["bobby"]
    assert body_of(inline, "plain").strip() == expected
    html = body_of(inline, "html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert body_of(by_id["hostile-template"], "plain").strip() == expected

    status, message = await api(gateway, "GET", f"/v1/messages/{urllib.parse.quote(job_id, safe='')}")
    assert (status, message["id"], message["status"]) == (200, job_id, "sent")
    stored = orjson.loads(await pg_pool.fetchval("SELECT job FROM messages WHERE id = $1", job_id))
    assert stored["data"] == HOSTILE
    status, fetched = await api(gateway, "GET", "/v1/users/hostile-user")
    assert (status, fetched["attributes"]) == (200, HOSTILE)
    assert await pg_pool.fetchval("SELECT count(*) FROM messages") == 2  # the table is intact
