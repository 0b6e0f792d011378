"""Pure functions, tested without fixtures: retry arithmetic, rendering, addresses, job parsing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.addresses import normalise_email, normalise_phone
from gateway.errors import InvalidJob, MessageFailed
from gateway.jobs import (
    Channel,
    EmailContent,
    Kind,
    PushContent,
    SmsContent,
    ToAddress,
    ToUser,
    job_json_schema,
    parse_job,
    utc_timestamp,
)
from gateway.render import Renderer, html_to_text
from gateway.retry import backoff_seconds

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "send-job.v1.json"

# -- utc_timestamp ------------------------------------------------------------------------------


def test_utc_timestamp_is_utc_with_truncated_milliseconds_and_a_z() -> None:
    moment = datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    assert utc_timestamp(moment) == "2026-12-31T23:59:59.999Z"  # truncated, not rounded up
    assert utc_timestamp(moment.astimezone(timezone(timedelta(hours=-5)))) == "2026-12-31T23:59:59.999Z"
    assert utc_timestamp(datetime(1999, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))) \
        == "1999-01-01T21:34:05.000Z"


# -- backoff_seconds ----------------------------------------------------------------------------

failures_st = st.integers(min_value=1, max_value=100)  # max_attempts is at most 100
seconds_st = st.floats(min_value=0.001, max_value=100_000, allow_nan=False)
unit_st = st.floats(min_value=0, max_value=1)


@given(failures=failures_st, base=seconds_st, cap=seconds_st, r=unit_st)
def test_backoff_is_within_half_a_step_and_a_step(
    failures: int, base: float, cap: float, r: float
) -> None:
    """The delay lies in [step/2, step] where step = min(cap, base * 2**(failures-1))."""
    step = min(cap, base * 2 ** (failures - 1))
    delay = backoff_seconds(failures, base=base, cap=cap, rand=lambda: r)
    assert step / 2 <= delay <= step


@given(failures=failures_st, base=seconds_st, cap=seconds_st, r=unit_st, retry_after=seconds_st)
def test_backoff_is_never_below_retry_after(
    failures: int, base: float, cap: float, r: float, retry_after: float
) -> None:
    """A provider's Retry-After is a floor; when it is below the jittered delay it changes nothing."""
    jittered = backoff_seconds(failures, base=base, cap=cap, rand=lambda: r)
    delay = backoff_seconds(failures, base=base, cap=cap, retry_after=retry_after, rand=lambda: r)
    assert delay == max(jittered, retry_after)


@given(
    failures=failures_st,
    more=st.integers(min_value=0, max_value=20),
    base=seconds_st,
    cap=seconds_st,
    r=unit_st,
)
def test_backoff_grows_with_failures_up_to_the_cap(
    failures: int, more: int, base: float, cap: float, r: float
) -> None:
    """With the same jitter, more failures never mean a shorter delay, and the delay never exceeds the cap."""
    earlier = backoff_seconds(failures, base=base, cap=cap, rand=lambda: r)
    later = backoff_seconds(failures + more, base=base, cap=cap, rand=lambda: r)
    assert earlier <= later <= cap


def test_backoff_doubles_each_time() -> None:
    """Without jitter the steps are base, 2 × base, 4 × base … then the cap."""
    delays = [backoff_seconds(n, base=10, cap=60, rand=lambda: 1.0) for n in range(1, 6)]
    assert delays == [10, 20, 40, 60, 60]


# -- Renderer -----------------------------------------------------------------------------------


def test_html_parts_are_autoescaped_and_text_parts_are_not() -> None:
    """The same template escapes data for an HTML part only (the cache keeps the two apart)."""
    renderer = Renderer()
    data = {"name": "Tom & <Jerry>"}
    assert (
        renderer.render("Hi {{ name }}", data, part="html", is_html=True)
        == "Hi Tom &amp; &lt;Jerry&gt;"
    )
    assert renderer.render("Hi {{ name }}", data, part="text", is_html=False) == "Hi Tom & <Jerry>"


def test_undefined_variable_fails_naming_the_variable_and_part() -> None:
    """A variable missing from data fails the message with a reason naming it and the part."""
    with pytest.raises(MessageFailed) as caught:
        Renderer().render("Hello {{ first_name }}", {"name": "x"}, part="subject", is_html=False)
    assert caught.value.reason == "template error in subject: 'first_name' is undefined"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ data.__init__.__globals__ }}",
        "{{ data.update({'x': 1}) }}",
    ],
)
def test_sandbox_refuses_unsafe_attribute_access(source: str) -> None:
    """Reaching for Python internals or mutating data fails the message instead of running."""
    with pytest.raises(MessageFailed) as caught:
        Renderer().render(source, {"data": {}}, part="text", is_html=False)
    assert caught.value.reason.startswith("template refused in text: access to attribute")
    assert "unsafe" in caught.value.reason


def test_syntax_error_reports_the_part_and_line() -> None:
    """A template syntax error names the part and the line it is on."""
    with pytest.raises(MessageFailed) as caught:
        Renderer().render("Hello\nthere\n{{ name ", {"name": "x"}, part="html", is_html=True)
    assert caught.value.reason.startswith("template syntax error in html line 3: ")


def test_error_raised_by_template_code_fails_the_message() -> None:
    """An exception inside template code becomes a reason naming its type."""
    with pytest.raises(MessageFailed) as caught:
        Renderer().render("{{ 1 / n }}", {"n": 0}, part="text", is_html=False)
    assert caught.value.reason == "template error in text: ZeroDivisionError: division by zero"


@pytest.mark.parametrize("source", ["Plain <b>text</b> & {braces} {not jinja}", "100% } off", ""])
def test_text_without_jinja_syntax_is_returned_as_is(source: str) -> None:
    """Text with no Jinja markers is returned untouched, even in an HTML part and with no data."""
    assert Renderer().render(source, {}, part="html", is_html=True) == source


def test_rendering_survives_cache_eviction_and_keeps_trailing_newline() -> None:
    """With a one-entry cache, templates render correctly in turn, trailing newline kept."""
    renderer = Renderer(cache_size=1)
    outputs = [
        renderer.render(source, {"n": i}, part="text", is_html=False)
        for i, source in enumerate(["a{{ n }}\n", "b{{ n }}", "a{{ n }}\n"])
    ]
    assert outputs == ["a0\n", "b1", "a2\n"]


def test_jinja_globals_render_from_a_cached_template_as_from_a_new_one() -> None:
    """range, namespace and dict (the environment's globals, copied into each compiled
    template) work the first time and from the cache; data may not shadow them for the next."""
    renderer = Renderer()
    source = "{% for i in range(n) %}{{ i }}{% endfor %}{% set ns = namespace(x=2) %}{{ ns.x }}"
    source += "{{ dict(a=3).a }}"
    assert renderer.render(source, {"n": 3}, part="text", is_html=False) == "01223"
    shadowed = {"n": 2, "range": lambda n: [7] * n}
    assert renderer.render(source, shadowed, part="text", is_html=False) == "7723"
    assert renderer.render(source, {"n": 1}, part="text", is_html=False) == "023"


# -- html_to_text -------------------------------------------------------------------------------


def test_html_to_text_keeps_words_links_and_line_structure() -> None:
    """Tags go, blocks end lines, links become 'text (url)', entities are decoded, head/script/style dropped."""
    markup = (
        "<html><head><title>Ignored</title><style>p { color: red }</style></head><body>"
        "<h1>Hi&nbsp;Jane</h1><p>Your   code is <b>1234</b>.</p>"
        "<script>alert('x')</script>"
        '<p><a href="https://shop.example/o?id=1&amp;t=2">View order</a></p>'
        "bye &amp; thanks<ul><li>one</li><li>two</li></ul>"
        "<table><tr><th>Total</th><td>9 &euro;</td></tr></table>"
        "Line<br>break<br/>"
        "</body></html>"
    )
    assert html_to_text(markup) == (
        "Hi Jane\n"
        "Your code is 1234.\n"
        "View order (https://shop.example/o?id=1&t=2)\n"
        "bye & thanks\none\ntwo\n"
        "Total 9 €\n"
        "Line\nbreak\n"
    )


def test_html_to_text_keeps_at_most_one_blank_line() -> None:
    """Blank lines from the markup are kept, but never more than one in a row."""
    assert html_to_text("<p>a</p>\n\n\n\n<p>b</p>") == "a\n\nb\n"


# -- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("jane@example.com", "jane@example.com"),
        ("  Jane.Doe@Example.COM ", "Jane.Doe@example.com"),
        ("o'brien+tag@mail.example.co.uk", "o'brien+tag@mail.example.co.uk"),
        ("a" * 64 + "@example.com", "a" * 64 + "@example.com"),
    ],
)
def test_valid_email_addresses_get_a_lower_case_domain(address: str, normal: str) -> None:
    """A valid address is stripped and its domain lower-cased; the local part is kept as written."""
    assert normalise_email(address) == normal


@pytest.mark.parametrize(
    "address",
    [
        "",
        "jane",
        "jane@",
        "@example.com",
        "jane@localhost",
        "jane@example.c",
        "jane doe@example.com",
        "jane@@example.com",
        "<jane@example.com>",
        "jane@example.com,bob@example.com",
        "jane@example.com\r\nBcc: x@evil.example",
        "jane\x00@example.com",
        "a" * 65 + "@example.com",
        "jane@-example.com",
    ],
)
def test_invalid_email_addresses_fail_the_message(address: str) -> None:
    """An address that can never be delivered, or would inject headers, fails with a reason."""
    with pytest.raises(MessageFailed) as caught:
        normalise_email(address)
    assert caught.value.reason == "invalid email address"


@pytest.mark.parametrize(
    ("number", "normal"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+44 20.7946.0958", "+442079460958"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+351 912 345 678", "+351912345678"),
    ],
)
def test_valid_phone_numbers_are_compacted_to_e164(number: str, normal: str) -> None:
    """Spaces, dots, dashes and parentheses are dropped; the E.164 number remains."""
    assert normalise_phone(number) == normal


@pytest.mark.parametrize(
    "number",
    [
        "4155550100",
        "+0415555010",
        "+123456",
        "+1234567",
        "+1234567890123456",
        "+1415555010a",
        "++14155550100",
        "",
        "+",
    ],
)
def test_invalid_phone_numbers_fail_the_message(number: str) -> None:
    """A number that is not E.164 (no +, leading 0, too short or long, letters) fails with a reason."""
    with pytest.raises(MessageFailed) as caught:
        normalise_phone(number)
    assert caught.value.reason.startswith("invalid phone number (E.164 expected")


# -- parse_job ----------------------------------------------------------------------------------


def job_bytes(**fields: Any) -> bytes:
    job: dict[str, Any] = {
        "id": "job-1",
        "channel": "email",
        "to": {"address": "jane@example.com"},
        "content": {"subject": "Hi", "text": "Hello"},
    }
    job.update(fields)
    return orjson.dumps({k: v for k, v in job.items() if v is not None})


def invalid_reason(body: bytes, max_bytes: int = 10_000) -> str:
    with pytest.raises(InvalidJob) as caught:
        parse_job(body, max_bytes=max_bytes)
    return caught.value.reason


def test_valid_email_job_is_parsed_with_typed_fields() -> None:
    """A complete email job parses into typed fields, content typed per channel."""
    job = parse_job(
        job_bytes(
            kind="transactional",
            campaign_id="spring",
            send_at="2030-01-01T10:00:00+02:00",
            expires_at="2030-01-02T00:00:00Z",
            data={"name": "Jane"},
            **{"from": "Shop <shop@example.org>"},
        ),
        max_bytes=10_000,
    )
    assert (job.id, job.channel, job.kind) == ("job-1", Channel.email, Kind.transactional)
    assert job.to == ToAddress(address="jane@example.com")
    assert job.address == "jane@example.com"
    assert job.typed_content() == EmailContent(subject="Hi", text="Hello")
    assert job.send_at is not None and job.send_at.utcoffset() is not None
    assert job.send_at.isoformat() == "2030-01-01T10:00:00+02:00"
    assert job.from_ == "Shop <shop@example.org>"
    assert job.data == {"name": "Jane"}


def test_user_id_template_job_is_parsed() -> None:
    """A job for a user_id with a template and no content parses, with no raw address."""
    job = parse_job(
        job_bytes(to={"user_id": "u-1"}, content=None, template="welcome"), max_bytes=10_000
    )
    assert job.to == ToUser(user_id="u-1")
    assert job.address is None
    assert job.typed_content() is None
    assert job.kind is None


@pytest.mark.parametrize(
    ("channel", "content", "typed"),
    [
        ("sms", {"body": "Code 1234"}, SmsContent(body="Code 1234")),
        ("push", {"title": "Hi", "data": {"k": 1}}, PushContent(title="Hi", data={"k": 1})),
        ("push", {"silent": True}, PushContent(silent=True)),
        ("email", {"subject": "S", "html": "<p>x</p>"}, EmailContent(subject="S", html="<p>x</p>")),
    ],
)
def test_content_takes_the_shape_of_its_channel(
    channel: str, content: dict[str, Any], typed: Any
) -> None:
    """Inline content is validated and typed by the job's channel."""
    job = parse_job(job_bytes(channel=channel, content=content), max_bytes=10_000)
    assert job.typed_content() == typed


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"content": None}, "give exactly one of content and template"),
        ({"template": "welcome"}, "give exactly one of content and template"),
        ({"channel": "sms"}, "content for sms: body: Field required"),
        (
            {"content": {"subject": "Hi"}},
            "content for email: email content needs html or text",
        ),
        (
            {"channel": "push", "content": {"body": "x", "sound": "ping"}},
            "content for push: sound: Extra inputs are not permitted",
        ),
        (
            {"channel": "sms", "content": {"body": ""}},
            "content for sms: body: String should have at least 1 character",
        ),
    ],
)
def test_exactly_one_of_content_and_template_in_the_channel_shape(
    fields: dict[str, Any], reason: str
) -> None:
    """A job needs exactly one of content and template, and content must fit its channel."""
    assert invalid_reason(job_bytes(**fields)).startswith(reason)


def test_nul_is_refused() -> None:
    """A \\u0000 anywhere in the job is refused (PostgreSQL cannot store it)."""
    reason = invalid_reason(job_bytes(data={"name": "Ja\x00ne"}))
    assert reason == "NUL characters (\\u0000) are not allowed in a job"


def test_control_characters_in_the_id_are_refused() -> None:
    """A job id with a control character is refused, naming the id."""
    assert invalid_reason(job_bytes(id="job\n1")).startswith("id: String should match pattern")


def test_body_over_the_size_limit_is_refused_before_parsing() -> None:
    """A body larger than max_bytes is refused naming its size and the limit, even if it is not JSON."""
    body = b"x" * 2049
    assert invalid_reason(body, max_bytes=2048) == "body of 2049 bytes exceeds the limit of 2048"
    assert parse_job(job_bytes(), max_bytes=len(job_bytes())).id == "job-1"


@pytest.mark.parametrize("field", ["send_at", "expires_at"])
def test_naive_datetimes_are_refused(field: str) -> None:
    """send_at and expires_at need a time zone; a naive datetime is refused naming the field."""
    reason = invalid_reason(job_bytes(**{field: "2030-01-01T10:00:00"}))
    assert reason == f"{field}: Input should have timezone info"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"colour": "blue"}, "colour"),
        ({"to": {"address": "jane@example.com", "name": "Jane"}}, "to.ToAddress.name"),
        (
            {"content": {"subject": "Hi", "text": "x", "cc": "bob@example.com"}},
            "content for email: cc",
        ),
    ],
)
def test_unknown_fields_are_refused(fields: dict[str, Any], where: str) -> None:
    """A field the schema does not define is refused, naming it."""
    reason = invalid_reason(job_bytes(**fields))
    assert reason.startswith(where)
    assert "Extra inputs are not permitted" in reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"id": ', "invalid JSON: "),
        (b"\xff\xfe", "invalid JSON: "),
        (b"[1, 2]", "Input should be an object"),
        (b"{}", "id: Field required; channel: Field required; to: Field required"),
    ],
)
def test_malformed_bodies_are_refused_with_a_one_line_reason(body: bytes, reason: str) -> None:
    """Non-JSON, non-object and empty bodies are refused with a one-line reason."""
    message = invalid_reason(body)
    assert message.startswith(reason)
    assert "\n" not in message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID_JOB = orjson.loads(job_bytes())
# A valid job with up to three fields replaced by something else, or added.
job_like = st.dictionaries(
    st.sampled_from(
        [
            "id",
            "channel",
            "to",
            "content",
            "template",
            "data",
            "campaign_id",
            "send_at",
            "expires_at",
            "from",
            "kind",
            "extra",
        ]
    ),
    json_values
    | st.sampled_from(["email", "sms", "push", "transactional", "2030-01-01T00:00:00Z"])
    | st.fixed_dictionaries({"address": st.text()})
    | st.fixed_dictionaries(
        {"subject": st.text()}, optional={"html": st.text(), "text": st.text(), "body": st.text()}
    ),
    max_size=3,
).map(lambda changes: {**VALID_JOB, **changes})


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: big integers and infinities are welcome here


@given(body=st.binary(max_size=300) | job_like.map(dumps) | json_values.map(dumps))
@example(body=b'{"\\n": null}')
def test_parse_job_raises_nothing_but_invalid_job(body: bytes) -> None:
    """Whatever the bytes, parse_job returns a job or raises InvalidJob with a one-line reason."""
    try:
        parse_job(body, max_bytes=10_000)
    except InvalidJob as exc:
        assert exc.reason and "\n" not in exc.reason


# -- the published schema -----------------------------------------------------------------------


def test_committed_schema_equals_the_model() -> None:
    """schema/send-job.v1.json is exactly what the job model generates."""
    assert json.loads(SCHEMA_FILE.read_text()) == job_json_schema()


def test_committed_schema_is_the_output_of_gateway_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gateway schema` prints the committed file byte for byte."""
    from gateway.cli import main

    assert main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()


@pytest.mark.parametrize(
    "source",
    ["{{ 'a' * 10**9 }}", "{{ [1] * 1000000 }}", "{{ 1000000 * 'ab' }}", "{{ 2 ** 100000 }}"],
)
def test_templates_cannot_build_huge_values(source: str) -> None:
    """Multiplying a string or list past the limit, or a huge power, fails the message instead."""
    with pytest.raises(MessageFailed, match="template refused in body"):
        Renderer().render(source, {}, part="body", is_html=False)


def test_modest_multiplication_still_works() -> None:
    """Ordinary arithmetic and short repeats render as before."""
    assert Renderer().render("{{ '-' * 10 }}{{ 3 * 4 }}{{ 2 ** 8 }}", {}, part="body", is_html=False) == "-" * 10 + "12256"


def test_modest_padding_still_works() -> None:
    """Short padding and format widths render as before."""
    source = "{{ 'ab'.ljust(4, '.') }}|{{ '{:>4}'.format(7) }}|{{ '%03d' % 7 }}"
    assert Renderer().render(source, {}, part="body", is_html=False) == "ab..|   7|007"
