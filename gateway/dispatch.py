"""Send one ready message to each of its targets and fold the results into one outcome.

The message is rendered once; each target gets its own copy. A ``user_id`` job also gets one
:class:`~gateway.store.DeliveryRecord` per endpoint, so a retry only re-sends to the endpoints
that did not finish. The message is ``sent`` when any endpoint took it, ``failed`` when none did
and at least one failed for good, and ``deferred`` while some endpoint is worth another try.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Mapping

import structlog

from adapters.base import Outbound, OutboundSms, Sender
from adapters.errors import (
    InvalidTokenError,
    OptedOutError,
    PermanentSendError,
    TransientSendError,
)
from gateway.backstop import Backstop
from gateway.decide import Ready, finish
from gateway.errors import MessageFailed
from gateway.jobs import utc_timestamp
from gateway.metrics import Metrics
from gateway.outcomes import Outcome, Status, utcnow
from gateway.prepare import prepare, readdress
from gateway.segments import sms_segments
from gateway.render import Renderer
from gateway.retry import backoff_seconds
from gateway.settings import Settings
from gateway.addresses import opt_out_key
from gateway.store import DeliveryRecord, EndpointEffect

log = structlog.get_logger("gateway.dispatch")


@dataclass(slots=True)
class _Result:
    address: str
    status: str  # sent | failed | transient | suppressed
    reason: str | None = None
    provider_message_id: str | None = None
    retry_after: float | None = None
    effect: str | None = None  # opted_out | token_invalid
    # The class of a provider's refusal, a metrics label: timeout | opted_out | invalid_token |
    # permanent | transient | adapter_error.
    error: str | None = None


@dataclass(slots=True)
class Dispatched:
    """The outcome of one message, its per-endpoint records and what we learnt of endpoints."""

    outcome: Outcome
    records: list[DeliveryRecord] = field(default_factory=list)
    effects: list[EndpointEffect] = field(default_factory=list)


class Dispatcher:
    """Renders and sends ready messages through the channel's sender."""

    def __init__(
        self,
        *,
        settings: Settings,
        senders: Mapping[str, Sender],
        renderer: Renderer,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._senders = senders
        self._renderer = renderer
        self._metrics = metrics
        # Bounded well inside the claim's lease, so the scheduler never re-queues a message
        # that is still being sent; one timer for all sends (gateway/backstop.py).
        self._backstop = Backstop(settings.processing_lease_seconds / 2)

    async def dispatch(self, ready: Ready) -> Dispatched:
        """Send to every target; return the outcome, per-endpoint records and endpoint effects."""
        job, started = ready.incoming.job, time.perf_counter()
        outcome = Outcome(job.id, job.channel.value, ready.incoming.kind, Status.sent, utcnow())
        outcome.campaign_id = job.campaign_id
        promotional = ready.incoming.kind == "promotional"
        try:
            message = prepare(
                job,
                ready.targets[0],
                renderer=self._renderer,
                settings=self._settings,
                template=ready.template,
                user_attributes=ready.claim.attributes,
                user_locale=ready.claim.locale,
                promotional=promotional,
            )
        except MessageFailed as exc:
            return Dispatched(finish(outcome, Status.failed, exc.reason))
        sends = [
            self._send_one(self._sender_for(ready, target), message, target, index, promotional)
            for index, target in enumerate(ready.targets)
        ]
        # Most messages have one target: awaited in place, without a task of its own.
        results = [await sends[0]] if len(sends) == 1 else list(await asyncio.gather(*sends))
        results += [_Result(a, "suppressed", "opted_out") for a in ready.opted_out]
        outcome.at = utcnow()
        self._fold(outcome, results, ready.claim.failures + 1)
        if outcome.status is Status.sent:
            outcome.detail["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            if isinstance(message, OutboundSms):
                encoding, segments = sms_segments(message.body)
                outcome.detail.update(encoding=encoding, segments=segments)
            if ready.template is not None:
                outcome.detail.update(template=ready.template.name, template_version=ready.template.version)
        records: list[DeliveryRecord] = []
        if ready.incoming.recipient is None:  # a user_id job: one record per endpoint
            records = [
                DeliveryRecord(job.id, r.address, "deferred" if r.status == "transient" else r.status,
                               r.reason, r.provider_message_id, outcome.at)
                for r in results
            ]
            outcome.detail["deliveries"] = [
                {"address": r.address, "status": r.status, **({"reason": r.reason} if r.reason else {})}
                for r in records
            ]
        effects = [
            EndpointEffect(r.effect, job.channel.value, r.address, _key(job.channel.value, r.address))
            for r in results
            if r.effect
        ]
        return Dispatched(outcome, records, effects)

    def _sender_for(self, ready: Ready, target: str) -> tuple[str, Sender] | str:
        """The sender for this target and its key (``email``, ``push:apns``…), or why none."""
        channel = ready.incoming.job.channel.value
        if channel != "push":
            sender = self._senders.get(channel)
            return (channel, sender) if sender else f"no sender configured for {channel}"
        platform = ready.claim.platforms.get(target) or getattr(ready.incoming.job.to, "platform", None)
        if platform is None:
            configured = [key for key in self._senders if key.startswith("push:")]
            if len(configured) != 1:
                return "push to a raw address needs to.platform (apns or fcm)"
            platform = configured[0].removeprefix("push:")
        key = f"push:{platform}"
        sender = self._senders.get(key)
        return (key, sender) if sender else f"no sender configured for push ({platform})"

    async def _send_one(
        self,
        sender: tuple[str, Sender] | str,
        message: Outbound,
        target: str,
        index: int,
        promotional: bool,
    ) -> _Result:
        if isinstance(sender, str):
            return _Result(target, "failed", sender)
        if index:
            try:
                message = readdress(message, target, settings=self._settings, promotional=promotional)
            except MessageFailed as exc:
                return _Result(target, "failed", exc.reason)
        provider, started = sender[0], time.perf_counter()
        result = await self._request(sender[1], message, target)
        self._metrics.observe_request(provider, time.perf_counter() - started, result.error)
        return result

    async def _request(self, sender: Sender, message: Outbound, target: str) -> _Result:
        """One send, its exceptions mapped to a result; ``error`` names the class of failure."""
        try:
            async with self._backstop():
                result = await sender.send(message)
        except TimeoutError:
            return _Result(target, "transient", "provider timed out", error="timeout")
        except OptedOutError as exc:
            return _Result(
                target, "suppressed", f"opted_out ({exc.reason})", effect="opted_out",
                error="opted_out",
            )
        except InvalidTokenError as exc:
            return _Result(
                target, "failed", exc.reason, effect="token_invalid", error="invalid_token"
            )
        except PermanentSendError as exc:
            return _Result(target, "failed", exc.reason, error="permanent")
        except TransientSendError as exc:
            return _Result(
                target, "transient", exc.reason, retry_after=exc.retry_after, error="transient"
            )
        except Exception as exc:  # an adapter bug must not kill the batch: retry, and say so
            log.exception("adapter.unexpected_error", message_id=getattr(message, "message_id", None))
            return _Result(target, "transient", f"adapter error: {exc}", error="adapter_error")
        return _Result(target, "sent", provider_message_id=result.provider_message_id)

    def _fold(self, outcome: Outcome, results: list[_Result], failures: int) -> None:
        transient = [r for r in results if r.status == "transient"]
        if transient and failures < self._settings.max_attempts:
            outcome.transient = True
            retry_after = max((r.retry_after or 0 for r in transient), default=0) or None
            delay = backoff_seconds(
                failures,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
                retry_after=retry_after,
            )
            outcome.due_at = outcome.at + timedelta(seconds=delay)
            outcome.detail = {"until": utc_timestamp(outcome.due_at), "attempt": failures}
            finish(outcome, Status.deferred, transient[0].reason)
            return
        for r in transient:  # out of attempts: what was transient fails for good
            outcome.transient = True
            r.status, r.reason = "failed", f"{r.reason} (gave up after {failures} attempts)"
        sent = [r for r in results if r.status == "sent"]
        failed = [r for r in results if r.status == "failed"]
        if sent:
            outcome.provider_message_id = sent[0].provider_message_id
            finish(outcome, Status.sent, None)
        elif failed:
            finish(outcome, Status.failed, failed[0].reason)
        else:
            suppressed = [r for r in results if r.status == "suppressed"]
            finish(outcome, Status.suppressed, suppressed[0].reason if suppressed else "opted_out")


def _key(channel: str, address: str) -> str:
    try:
        return opt_out_key(channel, address)
    except MessageFailed:
        return address
