"""Turn a job into the rendered message an adapter sends (pure, apart from the render cache)."""

from __future__ import annotations

from typing import Any

from adapters.base import Outbound, OutboundEmail, OutboundPush, OutboundSms
from gateway.addresses import normalise_email, normalise_phone
from gateway.errors import MessageFailed
from gateway.jobs import Channel, EmailContent, Job, PushContent, SmsContent
from gateway.render import Renderer, html_to_text
from gateway.settings import Settings


def prepare(job: Job, address: str, *, renderer: Renderer, settings: Settings) -> Outbound:
    """The rendered message for ``job`` to ``address``; raise :class:`MessageFailed` if impossible."""
    if job.template is not None:
        raise MessageFailed(f"unknown template {job.template!r}")
    content = job.typed_content()
    data = job.data
    if job.channel is Channel.email:
        assert isinstance(content, EmailContent)
        return _email(job, normalise_email(address), content, data, renderer, settings)
    if job.channel is Channel.sms:
        assert isinstance(content, SmsContent)
        body = renderer.render(content.body, data, part="body", is_html=False)
        return OutboundSms(message_id=job.id, to=normalise_phone(address), from_=job.from_, body=body)
    assert isinstance(content, PushContent)
    return OutboundPush(
        message_id=job.id,
        to=address.strip(),
        title=_maybe(renderer, content.title, data, "title"),
        body=_maybe(renderer, content.body, data, "body"),
        data=content.data,
        silent=content.silent,
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
