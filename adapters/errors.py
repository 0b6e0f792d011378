"""What a sender raises, and so what the pipeline decides.

::

    SendError                 base: the message was not handed over to the provider
    ├── TransientSendError    try again later (4xx SMTP, timeouts, refused connections)
    └── PermanentSendError    never try again (5xx SMTP, invalid headers, rejected address)

Each adapter translates its library's exceptions into these at its edge, so nothing from
``h2`` or our own protocol clients (``adapters/smtp_client.py``, ``adapters/http11.py``,
``adapters/h2client.py``) escapes ``adapters/``.
"""

from __future__ import annotations


class SendError(Exception):
    """The provider did not accept the message. ``reason`` is short and safe to log."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TransientSendError(SendError):
    """Raised when a later attempt may succeed; ``retry_after`` is the provider's hint, if any."""


class PermanentSendError(SendError):
    """Raised when the message can never be delivered as it is; it fails for good."""


class InvalidTokenError(PermanentSendError):
    """Raised when the provider says the device token is dead (APNs 410 Unregistered, 400
    BadDeviceToken; FCM UNREGISTERED): the message fails and the endpoint should be deactivated."""


class OptedOutError(PermanentSendError):
    """Raised when the provider refuses because the recipient opted out (Twilio 21610: they
    replied STOP): the message is suppressed and the opt-out recorded with source "provider"."""
