"""The sandbox: a sender for every channel that sends nothing and records everything.

``gateway dev`` wires :class:`SandboxSender` in place of the real providers, so a developer sees
each message in the :class:`Outbox` (and at ``/dev/outbox``) instead of in someone's inbox.
"""

from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from adapters.base import Outbound, OutboundEmail, OutboundPush, OutboundSms, SendResult
from adapters.errors import PermanentSendError, TransientSendError

# Substrings of a recipient address that make the sandbox fail, so retry and failure paths can be
# exercised in dev mode without a misbehaving provider.
FAIL_PERMANENT = "fail-permanent"
FAIL_TRANSIENT = "fail-transient"


class Outbox:
    """The last ``limit`` messages the sandbox sent, in memory and, given ``path``, in a file.

    The file is JSON Lines, one record per line, appended to and never truncated: it outlives
    the process and :meth:`clear`, so it can be tailed or grepped after the fact.
    """

    def __init__(self, *, limit: int = 500, path: Path | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._records: deque[dict[str, Any]] = deque(maxlen=limit)
        self._path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path | None:
        """The JSON Lines file records are appended to, if any."""
        return self._path

    def add(self, record: dict[str, Any]) -> None:
        """Keep ``record`` (dropping the oldest past the limit) and append it to the file."""
        if self._path is not None:
            # Serialise before remembering: a record the file cannot hold is refused whole.
            line = orjson.dumps(record) + b"\n"
            with self._path.open("ab") as file:
                file.write(line)
        self._records.append(record)

    def records(self) -> list[dict[str, Any]]:
        """The records kept in memory, newest first."""
        return list(reversed(self._records))

    def clear(self) -> None:
        """Forget the records kept in memory; the file is left as it is."""
        self._records.clear()


class SandboxSender:
    """A :class:`adapters.base.Sender` that records messages in an :class:`Outbox`.

    Magic recipient addresses (matched anywhere in the address, case-insensitively) make it fail
    the way a provider would, and nothing is recorded:

    * ``fail-permanent`` (``fail-permanent@example.com``, say) raises
      :class:`~adapters.errors.PermanentSendError`: the message fails for good.
    * ``fail-transient`` (``+4470fail-transient`` or ``fail-transient@example.com``) raises
      :class:`~adapters.errors.TransientSendError`: the message is retried later, and fails
      again, until its attempts run out.
    """

    def __init__(self, *, channel: str, outbox: Outbox) -> None:
        self.channel = channel
        self._outbox = outbox

    async def send(self, message: Outbound) -> SendResult:
        """Record ``message`` in the outbox, or fail as its recipient address asks."""
        address = message.to.lower()
        if FAIL_PERMANENT in address:
            raise PermanentSendError("sandbox: permanent failure requested by address")
        if FAIL_TRANSIENT in address:
            raise TransientSendError("sandbox: transient failure requested by address")
        provider_message_id = f"sandbox-{uuid.uuid4().hex}"
        record = message_record(message)
        record["provider_message_id"] = provider_message_id
        self._outbox.add(record)
        return SendResult(provider_message_id=provider_message_id)

    async def close(self) -> None:
        """Nothing to release."""


def message_record(message: Outbound) -> dict[str, Any]:
    """The outbox record of ``message``: its channel, addresses, content and ``sent_at`` (UTC)."""
    record: dict[str, Any]
    if isinstance(message, OutboundEmail):
        record = {
            "channel": "email",
            "message_id": message.message_id,
            "to": message.to,
            "from": message.from_,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "headers": dict(message.headers),
        }
    elif isinstance(message, OutboundSms):
        record = {
            "channel": "sms",
            "message_id": message.message_id,
            "to": message.to,
            "from": message.from_,
            "body": message.body,
        }
    elif isinstance(message, OutboundPush):
        record = {
            "channel": "push",
            "message_id": message.message_id,
            "to": message.to,
            # Push has no sender address; the key is kept so every record has the same shape.
            "from": None,
            "title": message.title,
            "body": message.body,
            "data": message.data,
            "silent": message.silent,
        }
    else:
        raise TypeError(f"sandbox cannot send {type(message).__name__}")
    record["sent_at"] = datetime.now(UTC).isoformat()
    return record
