"""Rendering a stored template for one message (pure, apart from the renderer's compile cache).

Three steps, each its own function:

1. the locale: :func:`gateway.locales.select_locale` among the locales that have the channel;
2. the parts: a locale's channel object replaces the default one wholesale
   (:func:`resolve_parts`), so a translation never mixes with the default language;
3. the variables: the job's ``data``, over the user's attributes under ``user``, over the
   template's ``defaults``, merged key by key at every depth (:func:`template_context`).

Any error (an undefined variable, a refused attribute) fails the message with a reason that
names the template, its version and the part: ``template 'welcome' v3 email.subject: 'first_name'
is undefined``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from gateway.errors import MessageFailed
from gateway.locales import select_locale
from gateway.render import Renderer, describe_error, html_to_text
from gateway.templates import (
    CHANNELS,
    EmailParts,
    Parts,
    PushParts,
    SmsParts,
    TemplateBody,
    TemplateVersion,
)

__all__ = ["RenderedParts", "locales_with", "render_template", "resolve_parts", "template_context"]


@dataclass(slots=True)  # not frozen: one per message, and frozen fields cost ~3x to set (store.py)
class RenderedParts:
    """A template rendered for one channel. Email fills ``subject``, ``html`` and ``text``
    (``text`` derived from ``html`` when the template has none); SMS fills ``body``; push fills
    ``title``, ``body``, ``data`` and ``silent``. The rest stay ``None``."""

    name: str
    version: int
    channel: str
    locale: str | None
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    body: str | None = None
    title: str | None = None
    data: dict[str, str] | None = None
    silent: bool = False

    def parts(self) -> dict[str, Any]:
        """The channel's parts as JSON, as the render preview answers them."""
        if self.channel == "email":
            return {"subject": self.subject, "html": self.html, "text": self.text}
        if self.channel == "sms":
            return {"body": self.body}
        return {"title": self.title, "body": self.body, "data": self.data, "silent": self.silent}


def locales_with(body: TemplateBody, channel: str) -> set[str]:
    """The locales of ``body`` that have parts for ``channel``."""
    return {tag for tag, parts in body.locales.items() if parts.for_channel(channel) is not None}


def resolve_parts(body: TemplateBody, channel: str, locale: str | None) -> Parts | None:
    """The parts for ``channel`` in ``locale`` (a key of ``body.locales``, or ``None`` for the
    default): the locale's own channel object when it has one, else the default's."""
    if locale is not None and locale in body.locales:
        parts = body.locales[locale].for_channel(channel)
        if parts is not None:
            return parts
    return body.for_channel(channel)


def template_context(
    data: Mapping[str, Any], user_attributes: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The variables a template sees: ``data`` over ``{"user": user_attributes}`` over
    ``defaults``. Objects present in several are merged key by key (so ``defaults`` may hold
    ``{"user": {"first_name": "there"}}`` for users without one); anything else is replaced."""
    return _merge(_merge(dict(defaults), {"user": dict(user_attributes)}), data)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def render_template(
    renderer: Renderer,
    template: TemplateVersion,
    channel: str,
    *,
    data: Mapping[str, Any],
    user_attributes: Mapping[str, Any] | None = None,
    user_locale: str | None = None,
    locale: str | None = None,
) -> RenderedParts:
    """Render ``template`` for ``channel``; raise :class:`MessageFailed` naming the part.

    ``locale`` is an explicitly requested locale (the preview's); ``user_locale`` the
    recipient's. ``user_attributes`` are the recipient's attributes (none for a raw address).
    """
    if channel not in CHANNELS:
        raise MessageFailed(f"unknown channel {channel!r}")
    body = template.body
    chosen = select_locale(locale, user_locale, locales_with(body, channel))
    parts = resolve_parts(body, channel, chosen)
    if parts is None:
        raise MessageFailed(
            f"template {template.name!r} v{template.version} has no {channel} content"
        )
    context = template_context(data, user_attributes or {}, body.defaults)
    # ``chosen`` is only ever a locale that has this channel (see locales_with).
    prefix = channel if chosen is None else f"locales.{chosen}.{channel}"
    render = _PartRenderer(renderer, template, prefix, context)
    # Built once with every part (dataclasses.replace cost as much as a render).
    head = {"name": template.name, "version": template.version, "channel": channel,
            "locale": chosen}
    if isinstance(parts, EmailParts):
        subject = render("subject", parts.subject)
        html = render.maybe("html", parts.html, is_html=True)
        text = render.maybe("text", parts.text)
        if text is None and html is not None:
            text = html_to_text(html)
        return RenderedParts(**head, subject=subject, html=html, text=text)
    if isinstance(parts, SmsParts):
        return RenderedParts(**head, body=render("body", parts.body))
    assert isinstance(parts, PushParts)
    data_parts = None
    if parts.data is not None:
        # Each value is a text template, and stays a string (FCM's data is strings only).
        data_parts = {key: render(f"data.{key}", value) for key, value in parts.data.items()}
    return RenderedParts(
        **head,
        title=render.maybe("title", parts.title),
        body=render.maybe("body", parts.body),
        data=data_parts,
        silent=bool(parts.silent),
    )


class _PartRenderer:
    """Renders the parts of one channel object, wording errors with the template's name,
    version and the part's path in the body."""

    def __init__(
        self, renderer: Renderer, template: TemplateVersion, prefix: str, context: dict[str, Any]
    ) -> None:
        self._renderer = renderer
        self._template = template
        self._prefix = prefix
        self._context = context

    def __call__(self, part: str, source: str, *, is_html: bool = False) -> str:
        try:
            return self._renderer.render_raw(source, self._context, is_html=is_html)
        except Exception as exc:  # any error raised by template code fails this message only
            raise MessageFailed(
                f"template {self._template.name!r} v{self._template.version}"
                f" {self._prefix}.{part}: {describe_error(exc)}"
            ) from None

    def maybe(self, part: str, source: str | None, *, is_html: bool = False) -> str | None:
        return None if source is None else self(part, source, is_html=is_html)
