"""The send job, version 1: the JSON object upstream services publish or POST.

The pydantic model is the single source of truth; ``schema/send-job.v1.json`` is generated from
it (``gateway schema``) and a test keeps the two equal.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateway.errors import InvalidJob


class Channel(str, Enum):
    """Where a message goes."""

    email = "email"
    sms = "sms"
    push = "push"


class Kind(str, Enum):
    """Transactional jobs have their own queue so a promotional backlog never delays them."""

    transactional = "transactional"
    promotional = "promotional"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToAddress(_Strict):
    """A raw address: an email address, an E.164 phone number or a device token."""

    address: Annotated[str, Field(min_length=1, max_length=512)]
    platform: Literal["apns", "fcm"] | None = Field(
        None, description="For a raw push token: which push service it belongs to"
    )


class ToUser(_Strict):
    """A user known to the gateway; resolved to that user's endpoints on the job's channel."""

    user_id: Annotated[str, Field(min_length=1, max_length=128)]


class EmailContent(_Strict):
    """Inline email: a subject and at least one of ``html`` and ``text``."""

    subject: Annotated[str, Field(max_length=998)]
    html: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _some_body(self) -> "EmailContent":
        if self.html is None and self.text is None:
            raise ValueError("email content needs html or text")
        return self


class SmsContent(_Strict):
    """Inline SMS text."""

    body: Annotated[str, Field(min_length=1, max_length=1600)]


class PushContent(_Strict):
    """Inline push notification; ``silent`` sends data only."""

    title: str | None = None
    body: str | None = None
    data: dict[str, Any] | None = None
    silent: bool = False
    collapse_id: str | None = Field(
        None, min_length=1, max_length=64, description="Replaces an undelivered push with the same id"
    )


Content = Union[EmailContent, SmsContent, PushContent]
_CONTENT_TYPES: dict[Channel, type[BaseModel]] = {
    Channel.email: EmailContent,
    Channel.sms: SmsContent,
    Channel.push: PushContent,
}


class Job(_Strict):
    """A send job (v1). ``id`` is the idempotency key: the same id is never sent twice."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Send job v1",
        json_schema_extra={"$id": "https://github.com/messaging-gateway/schema/send-job.v1.json"},
    )

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
    channel: Channel
    to: ToAddress | ToUser
    content: dict[str, Any] | None = Field(
        None, description="Inline content; its shape depends on channel (see $defs)"
    )
    template: str | None = Field(None, min_length=1, max_length=200)
    template_version: int | None = Field(
        None, ge=1, description="Pin a template version (default: the latest when processed)"
    )
    locale: str | None = Field(
        None, min_length=2, max_length=35, description="Template locale, e.g. pt-BR"
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Template variables")
    campaign_id: str | None = Field(None, min_length=1, max_length=128)
    send_at: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    from_: str | None = Field(None, alias="from", min_length=1, max_length=512)
    kind: Kind | None = None

    @model_validator(mode="after")
    def _content_xor_template(self) -> "Job":
        if (self.content is None) == (self.template is None):
            raise ValueError("give exactly one of content and template")
        if self.template_version is not None and self.template is None:
            raise ValueError("template_version needs template")
        if self.content is not None:
            # Checked here (not with a union) so the error names the channel's shape.
            try:
                _CONTENT_TYPES[self.channel].model_validate(self.content)
            except ValidationError as exc:
                raise ValueError(f"content for {self.channel.value}: {describe(exc)}") from None
        return self

    def typed_content(self) -> Content | None:
        """The inline content as the model of this job's channel."""
        if self.content is None:
            return None
        return _CONTENT_TYPES[self.channel].model_validate(self.content)  # type: ignore[return-value]

    @property
    def address(self) -> str | None:
        """The raw recipient address, or ``None`` for a ``user_id`` job."""
        return self.to.address if isinstance(self.to, ToAddress) else None


def parse_job(body: bytes, *, max_bytes: int) -> Job:
    """Parse and validate a job body; raise :class:`InvalidJob` with a one-line reason."""
    if len(body) > max_bytes:
        raise InvalidJob(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    if b"\\u0000" in body:
        # PostgreSQL text and jsonb cannot hold NUL; refuse it here rather than fail a batch.
        raise InvalidJob("NUL characters (\\u0000) are not allowed in a job")
    try:
        return Job.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidJob(describe(exc)) from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def describe(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``, joined with ``; ``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "json_invalid":
            parts.append(f"invalid JSON: {error['msg']}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
    # Field names come from the job itself: escape their control characters to stay one line.
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", "; ".join(parts))[:1000]


def job_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a send job, with the per-channel content shapes."""
    schema = Job.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    for model in (EmailContent, SmsContent, PushContent):
        defs[model.__name__] = model.model_json_schema()
    schema["properties"]["content"] = {
        "anyOf": [{"$ref": f"#/$defs/{m.__name__}"} for m in (EmailContent, SmsContent, PushContent)]
        + [{"type": "null"}],
        "default": None,
        "description": "Inline content; its shape depends on channel",
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "A send job. Exactly one of content and template. kind follows the routing key on AMQP."
    )
    return schema


def utc_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z``, as used in events and answers."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = [
    "Channel",
    "Content",
    "EmailContent",
    "Job",
    "Kind",
    "PushContent",
    "SmsContent",
    "ToAddress",
    "ToUser",
    "job_json_schema",
    "parse_job",
    "utc_timestamp",
]
