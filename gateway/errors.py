"""Errors of the gateway itself (the adapters' send errors live in ``adapters.errors``).

::

    GatewayError
    ├── InvalidJob        the job can never be processed: it goes to ``gateway.dead`` with reason
    └── MessageFailed     one message fails for good with a reason (template error, bad address)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's own errors."""


class InvalidJob(GatewayError):
    """Raised while parsing a job that can never be processed. ``reason`` goes in ``x-gateway-error``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MessageFailed(GatewayError):
    """Raised while preparing one message that must fail for good; nothing is sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
