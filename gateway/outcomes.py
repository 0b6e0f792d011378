"""Outcomes of messages and the events that announce them on ``gateway.events``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson

from gateway.jobs import utc_timestamp


def utcnow() -> datetime:
    """The current instant, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


class Status(str, Enum):
    """Statuses of a message. Each is published with routing key ``message.<status>``."""

    accepted = "accepted"
    sent = "sent"
    failed = "failed"
    suppressed = "suppressed"
    deferred = "deferred"
    expired = "expired"
    delivered = "delivered"  # from a provider's receipt, after sent
    undelivered = "undelivered"


FINAL = frozenset({Status.sent, Status.failed, Status.suppressed, Status.expired})


@dataclass(slots=True)
class Outcome:
    """What happened to one message in this attempt. ``due_at`` is set when deferred."""

    message_id: str
    channel: str
    kind: str
    status: Status
    at: datetime
    reason: str | None = None
    due_at: datetime | None = None
    provider_message_id: str | None = None
    transient: bool = False  # a transient send failure: counts toward max attempts
    campaign_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def event(self) -> tuple[str, bytes]:
        """The (routing key, JSON body) published on ``gateway.events``."""
        return event_body(
            message_id=self.message_id,
            status=self.status,
            channel=self.channel,
            kind=self.kind,
            at=self.at,
            reason=self.reason,
            campaign_id=self.campaign_id,
            provider_message_id=self.provider_message_id,
            **self.detail,
        )


def event_body(
    *,
    message_id: str,
    status: Status,
    channel: str,
    kind: str,
    at: datetime,
    reason: str | None = None,
    **extra: Any,
) -> tuple[str, bytes]:
    """Build one event: ``message_id``, ``status``, ``channel``, ``timestamp`` always; the rest when set."""
    body: dict[str, Any] = {
        "message_id": message_id,
        "status": status.value,
        "channel": channel,
        "kind": kind,
        "timestamp": utc_timestamp(at),
    }
    if reason is not None:
        body["reason"] = reason
    for key, value in extra.items():
        if value is not None:
            body[key] = utc_timestamp(value) if isinstance(value, datetime) else value
    return f"message.{status.value}", orjson.dumps(body)
