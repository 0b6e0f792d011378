"""Template bodies, locale choice and rendering (pure: no database, no fixtures)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.errors import MessageFailed
from gateway.locales import fallback_chain, select_locale
from gateway.render import Renderer
from gateway.template_render import render_template, resolve_parts, template_context
from gateway.templates import TemplateBody, TemplateCache, TemplateVersion, check_syntax

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def version(body: dict[str, Any], *, name: str = "welcome", number: int = 3) -> TemplateVersion:
    return TemplateVersion(name, number, TemplateBody.model_validate(body), EPOCH)


def render(body: dict[str, Any], channel: str, **kwargs: Any) -> Any:
    kwargs.setdefault("data", {})
    return render_template(Renderer(), version(body), channel, **kwargs)


# -- locales -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "user", "available", "expected"),
    [
        ("pt-BR", None, {"pt-BR", "pt"}, "pt-BR"),
        ("pt-BR", None, {"pt"}, "pt"),
        ("pt-BR", None, {"es"}, None),
        ("PT_br", None, {"pt-BR"}, "pt-BR"),
        ("pt", None, {"pt-BR"}, None),  # a language never falls forward to one of its regions
        ("zh-Hant-TW", None, {"zh", "zh-Hant"}, "zh-Hant"),
        ("zh-Hant-TW", None, {"zh"}, "zh"),
        (None, "pt-BR", {"pt"}, "pt"),
        ("fr", "pt-BR", {"fr", "pt"}, "fr"),
        ("de", "pt-BR", {"fr", "pt"}, "pt"),
        (None, None, {"pt"}, None),
        ("", "", {"pt"}, None),
        ("pt-BR", "fr", set(), None),  # a template without locales: its default parts
    ],
)
def test_select_locale_falls_back_by_subtag_then_to_the_default(
    requested: str | None, user: str | None, available: set[str], expected: str | None
) -> None:
    """The requested locale, then the user's, each shortened a subtag at a time, case-insensitive; else None."""
    assert select_locale(requested, user, available) == expected


def test_fallback_chain_drops_one_subtag_at_a_time() -> None:
    """zh-Hant-TW falls back to zh-Hant, then zh, in lower case."""
    assert list(fallback_chain("zh-Hant-TW")) == ["zh-hant-tw", "zh-hant", "zh"]


tags = st.from_regex(r"[a-z]{2}(-[A-Z][a-z]{3})?(-[A-Z]{2})?", fullmatch=True)


@given(st.one_of(st.none(), tags), st.one_of(st.none(), tags), st.sets(tags, max_size=6))
def test_select_locale_answers_an_available_locale_or_none(
    requested: str | None, user: str | None, available: set[str]
) -> None:
    """Whatever is asked, the answer is one of the available locales, spelt as given, or None."""
    assert select_locale(requested, user, available) in available | {None}


@given(tags, st.sets(tags, max_size=6))
def test_an_available_requested_locale_is_chosen_in_any_case(
    requested: str, available: set[str]
) -> None:
    """A requested locale that is available is chosen, however its case is written."""
    assert select_locale(requested.swapcase(), None, available | {requested}) == requested


# -- variables ---------------------------------------------------------------------------------


def test_data_wins_over_user_attributes_which_win_over_defaults() -> None:
    """One variable defined in data, user attributes and defaults renders the data's value, then the user's, then the default."""
    body = {
        "sms": {"body": "{{ user.first_name }} {{ user.city }} {{ user.plan }} {{ greeting }}"},
        "defaults": {
            "greeting": "hi",
            "user": {"first_name": "there", "city": "-", "plan": "free"},
        },
    }
    rendered = render(
        body,
        "sms",
        data={"greeting": "hello", "user": {"first_name": "Ana"}},
        user_attributes={"first_name": "Jane", "city": "Lisbon"},
    )
    assert rendered.body == "Ana Lisbon free hello"


values = st.recursive(
    st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
    lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
contexts = st.dictionaries(st.text(max_size=3), values, max_size=4)


@given(contexts, contexts, contexts)
def test_context_merge_keeps_the_highest_precedence_value(
    data: dict[str, Any], user: dict[str, Any], defaults: dict[str, Any]
) -> None:
    """Data values win, user attributes win under `user` unless data sets `user`, and defaults fill only what is left."""
    context = template_context(data, user, defaults)
    for key, value in data.items():
        if not isinstance(value, dict):
            assert context[key] == value
    if "user" not in data:
        for key, value in user.items():
            if not isinstance(value, dict):
                assert context["user"][key] == value
    for key, value in defaults.items():
        if key not in data and key != "user":
            assert context[key] == value


def test_a_missing_variable_fails_naming_template_version_part_and_variable() -> None:
    """An undefined variable fails the message with a reason naming the template, its version, the part and the variable."""
    with pytest.raises(MessageFailed) as caught:
        render({"email": {"subject": "Hi {{ first_name }}", "text": "x"}}, "email")
    assert caught.value.reason == "template 'welcome' v3 email.subject: 'first_name' is undefined"


def test_a_missing_variable_in_a_locale_names_the_locale_path() -> None:
    """An error in a locale's part names the part by its path under locales."""
    body = {"sms": {"body": "hi"}, "locales": {"pt": {"sms": {"body": "olá {{ nome }}"}}}}
    with pytest.raises(MessageFailed) as caught:
        render(body, "sms", user_locale="pt-BR")
    assert caught.value.reason == "template 'welcome' v3 locales.pt.sms.body: 'nome' is undefined"


def test_sandbox_refuses_attribute_escape() -> None:
    """Reaching for ''.__class__ fails the message as refused instead of leaking Python internals."""
    with pytest.raises(MessageFailed) as caught:
        render({"sms": {"body": "{{ ''.__class__ }}"}}, "sms")
    assert caught.value.reason.startswith("template 'welcome' v3 sms.body: refused: ")


# -- parts -------------------------------------------------------------------------------------


def test_a_locale_channel_object_replaces_the_default_wholesale() -> None:
    """A locale's email without text gets its text from its own HTML, never the default language's text."""
    body = {
        "email": {"subject": "Hello", "html": "<p>Hello</p>", "text": "Hello (text)"},
        "locales": {"pt": {"email": {"subject": "Olá", "html": "<p>Olá</p>"}}},
    }
    rendered = render(body, "email", locale="pt-BR")
    assert (rendered.locale, rendered.subject, rendered.text) == ("pt", "Olá", "Olá\n")
    parts = resolve_parts(TemplateBody.model_validate(body), "email", "pt")
    assert parts is not None and getattr(parts, "text") is None


def test_a_locale_without_the_channel_falls_back_for_that_channel_only() -> None:
    """A locale with only an email falls back to the default SMS, and says so in locale."""
    body = {
        "sms": {"body": "Hello"},
        "email": {"subject": "Hello", "text": "Hello"},
        "locales": {"pt": {"email": {"subject": "Olá", "text": "Olá"}}},
    }
    assert render(body, "sms", locale="pt").body == "Hello"
    assert render(body, "sms", locale="pt").locale is None
    assert render(body, "email", locale="pt").subject == "Olá"


def test_html_is_autoescaped_in_the_html_part_only() -> None:
    """A variable holding markup is escaped in email html, left as is in the subject and the text."""
    body = {"email": {"subject": "{{ name }}", "html": "<p>{{ name }}</p>", "text": "{{ name }}"}}
    rendered = render(body, "email", data={"name": "<b>Jo</b>"})
    assert rendered.html == "<p>&lt;b&gt;Jo&lt;/b&gt;</p>"
    assert rendered.subject == rendered.text == "<b>Jo</b>"


def test_push_data_values_render_as_strings() -> None:
    """Each push data value is a text template and stays a string; silent defaults to false."""
    body = {"push": {"title": "Hi {{ n }}", "data": {"count": "{{ n }}", "url": "/x"}}}
    rendered = render(body, "push", data={"n": 3})
    assert rendered.parts() == {
        "title": "Hi 3",
        "body": None,
        "data": {"count": "3", "url": "/x"},
        "silent": False,
    }


def test_a_channel_the_template_lacks_fails_the_message() -> None:
    """Rendering a template for a channel it has no parts for fails with a reason naming it."""
    with pytest.raises(MessageFailed, match="template 'welcome' v3 has no push content"):
        render({"sms": {"body": "x"}}, "push")


# -- the body model ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"email": {"subject": "x"}}, "email needs html or text"),
        ({"email": {"html": "x"}}, "email.subject"),
        ({"sms": {"body": "x", "from": "y"}}, "sms.from"),
        ({"push": {"data": {"n": 1}}}, "push.data.n"),
        ({"sms": {"body": 5}}, "sms.body"),
        ({"locales": {"xx-yy-zz-0": {"sms": {"body": "x"}}}}, "invalid locale"),
        ({"locales": {"pt-br": {"sms": {"body": "a"}}, "pt_BR": {"sms": {"body": "b"}}}}, "twice"),
        ({"defaults": {"a": 1}}, "at least one of email, sms and push"),
        ({"fax": {}}, "fax"),
    ],
)
def test_invalid_bodies_are_refused_naming_the_problem(body: dict[str, Any], problem: str) -> None:
    """A body breaking the shape is refused by the model with an error that names the field or rule."""
    with pytest.raises(ValidationError, match=problem.replace(".", r"\.")):
        TemplateBody.model_validate(body)


def test_the_normal_form_drops_nulls_and_normalises_locale_tags() -> None:
    """to_json leaves out nulls and empty locales/defaults and spells locale tags in their normal form."""
    body = TemplateBody.model_validate(
        {
            "email": {"subject": "s", "html": None, "text": "t"},
            "locales": {"pt_br": {}},
            "defaults": {},
        }
    )
    assert body.to_json() == {"email": {"subject": "s", "text": "t"}, "locales": {"pt-BR": {}}}


def test_check_syntax_names_the_part_path_and_line() -> None:
    """A syntax error is reported with the part's path and the line number, in locales too."""
    body = TemplateBody.model_validate(
        {
            "email": {"subject": "ok", "html": "<p>\n{{ a }}\n{{ b }</p>"},
            "locales": {"pt": {"push": {"data": {"k": "{% if %}"}}}},
        }
    )
    with pytest.raises(ValueError, match=r"^email\.html line 3: unexpected '}'$"):
        check_syntax(body, Renderer())
    only_locale = TemplateBody.model_validate(
        {"locales": {"pt": {"push": {"data": {"k": "{% if %}"}}}}}
    )
    with pytest.raises(ValueError, match=r"^locales\.pt\.push\.data\.k line 1: "):
        check_syntax(only_locale, Renderer())


# -- the cache ---------------------------------------------------------------------------------


def test_cache_drops_the_least_recently_used() -> None:
    """The cache keeps at most its size and drops the least recently used first."""
    cache = TemplateCache(max_versions=2)
    v1, v2, other = (
        version({"sms": {"body": "a"}}, number=1),
        version({"sms": {"body": "b"}}, number=2),
        version({"sms": {"body": "c"}}, name="other", number=1),
    )
    cache.put(v2)
    cache.put(v1)
    assert cache.get("welcome", 2) is v2  # now v1 is the least recently used
    cache.put(other)
    assert len(cache) == 2
    assert cache.get("welcome", 1) is None
    assert cache.get("welcome", 2) is v2 and cache.get("other", 1) is other
    cache.put(version({"sms": {"body": "d"}}, name="third", number=1))  # other was used last
    assert cache.get("welcome", 2) is None and cache.get("other", 1) is other
