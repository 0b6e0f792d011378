"""Turn a job into the rendered message an adapter sends (pure, apart from the render cache)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from adapters.base import Outbound, OutboundEmail, OutboundPush, OutboundSms
from gateway.addresses import normalise_email, normalise_phone, stored_phone
from gateway.errors import MessageFailed
from gateway.jobs import Channel, EmailContent, Job, PushContent, SmsContent
from gateway.render import Renderer, html_to_text
from gateway.settings import Settings
from gateway.template_render import RenderedParts, render_template
from gateway.templates import TemplateVersion
from gateway.unsubscribe import unsubscribe_headers


def prepare(
    job: Job,
    address: str,
    *,
    renderer: Renderer,
    settings: Settings,
    template: TemplateVersion | None = None,
    user_attributes: Mapping[str, Any] | None = None,
    user_locale: str | None = None,
    promotional: bool = False,
) -> Outbound:
    """The rendered message for ``job`` to ``address``; raise :class:`MessageFailed` if impossible.

    A stored ``template`` is rendered with the job's data, the user's attributes (``user.*``) and
    the template's defaults; inline content with the job's data.
    """
    if job.template is not None:
        if template is None:
            raise MessageFailed(f"unknown template {job.template!r}")
        parts = render_template(
            renderer,
            template,
            job.channel.value,
            data=job.data,
            user_attributes=user_attributes,
            user_locale=user_locale,
            locale=job.locale,
        )
        return _from_parts(job, address, parts, settings, promotional)
    content = job.typed_content()
    data = job.data
    if job.channel is Channel.email:
        assert isinstance(content, EmailContent)
        email = _email(job, normalise_email(address), content, data, renderer, settings)
        return _with_unsubscribe(email, settings) if promotional else email
    if job.channel is Channel.sms:
        assert isinstance(content, SmsContent)
        body = renderer.render(content.body, data, part="body", is_html=False)
        return OutboundSms(message_id=job.id, to=_sms_to(job, address), from_=job.from_, body=body)
    assert isinstance(content, PushContent)
    return OutboundPush(
        message_id=job.id,
        to=address.strip(),
        title=_maybe(renderer, content.title, data, "title"),
        body=_maybe(renderer, content.body, data, "body"),
        data=content.data,
        silent=content.silent,
        expires_at=job.expires_at,
        collapse_id=content.collapse_id,
    )


def _email(
    job: Job,
    to: str,
    content: EmailContent,
    data: dict[str, Any],
    renderer: Renderer,
    settings: Settings,
) -> OutboundEmail:
    subject = renderer.render(content.subject, data, part="subject", is_html=False)
    html = _maybe(renderer, content.html, data, "html", is_html=True)
    text = _maybe(renderer, content.text, data, "text")
    if text is None and html is not None:
        text = html_to_text(html)
    return OutboundEmail(
        message_id=job.id,
        to=to,
        from_=job.from_ or settings.email_from,
        subject=subject,
        text=text,
        html=html,
    )


def _maybe(
    renderer: Renderer, source: str | None, data: dict[str, Any], part: str, *, is_html: bool = False
) -> str | None:
    return None if source is None else renderer.render(source, data, part=part, is_html=is_html)


def _from_parts(
    job: Job, address: str, parts: RenderedParts, settings: Settings, promotional: bool
) -> Outbound:
    """The outbound message from a rendered template (never rendered a second time)."""
    if job.channel is Channel.email:
        email = OutboundEmail(
            message_id=job.id,
            to=normalise_email(address),
            from_=job.from_ or settings.email_from,
            subject=parts.subject or "",
            text=parts.text,
            html=parts.html,
        )
        return _with_unsubscribe(email, settings) if promotional else email
    if job.channel is Channel.sms:
        if not parts.body:
            raise MessageFailed(f"template {parts.name!r} v{parts.version} has no sms body")
        return OutboundSms(message_id=job.id, to=_sms_to(job, address), from_=job.from_, body=parts.body)
    return OutboundPush(
        message_id=job.id,
        to=address.strip(),
        title=parts.title,
        body=parts.body,
        data=parts.data,
        silent=parts.silent,
        expires_at=job.expires_at,
    )


def _sms_to(job: Job, address: str) -> str:
    """The job's own number, checked in full; or one of the user's, stored in normal form."""
    return normalise_phone(address) if job.address is not None else stored_phone(address)


def _with_unsubscribe(email: OutboundEmail, settings: Settings) -> OutboundEmail:
    """Promotional email carries RFC 8058 one-click unsubscribe headers (when configured)."""
    headers = unsubscribe_headers(settings, email.to)
    return dataclasses.replace(email, headers={**email.headers, **headers}) if headers else email


def readdress(message: Outbound, address: str, *, settings: Settings, promotional: bool) -> Outbound:
    """The same rendered message for another endpoint of the user (its own unsubscribe link)."""
    if isinstance(message, OutboundEmail):
        headers = {k: v for k, v in message.headers.items() if not k.startswith("List-Unsubscribe")}
        email = dataclasses.replace(message, to=normalise_email(address), headers=headers)
        return _with_unsubscribe(email, settings) if promotional else email
    if isinstance(message, OutboundSms):
        return dataclasses.replace(message, to=stored_phone(address))  # another of the user's
    return dataclasses.replace(message, to=address.strip())
