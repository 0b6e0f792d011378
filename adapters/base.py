"""The adapter boundary: rendered outbound messages, the ``Sender`` protocol, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Union


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    """A rendered email. ``headers`` are extra headers (``List-Unsubscribe``, say)."""

    message_id: str
    to: str
    from_: str
    subject: str
    text: str | None
    html: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboundSms:
    """A rendered SMS. ``from_`` is one of our numbers, or ``None`` for the default."""

    message_id: str
    to: str
    from_: str | None
    body: str


@dataclass(frozen=True, slots=True)
class OutboundPush:
    """A rendered push notification for one device token."""

    message_id: str
    to: str
    title: str | None
    body: str | None
    data: dict[str, Any] | None
    silent: bool = False
    expires_at: datetime | None = None  # the provider may drop it undelivered after this
    collapse_id: str | None = None  # a newer push with the same id replaces an undelivered one


Outbound = Union[OutboundEmail, OutboundSms, OutboundPush]


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider took the message. ``provider_message_id`` is its id for it, when it gives one."""

    provider_message_id: str | None = None


class Sender(Protocol):
    """One provider for one channel. Raise :mod:`adapters.errors` types, nothing else."""

    channel: str

    async def send(self, message: Any) -> SendResult:
        """Hand one message to the provider."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
