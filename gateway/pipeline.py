"""The life of a batch of jobs: parse, claim, decide, render, dispatch, record, announce, ack.

Per batch, whatever its size: one statement claims it (idempotency by job id), one records every
outcome with its event, one gather publishes the events. Sends run concurrently. A job is acked
only after its outcome is committed; if PostgreSQL fails, the batch goes back to the queue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Mapping, Sequence

import asyncpg
import structlog

from adapters.base import Outbound, Sender
from adapters.errors import PermanentSendError, TransientSendError
from gateway.broker import Broker, Delivery, kind_from_routing_key
from gateway.errors import InvalidJob, MessageFailed
from gateway.jobs import Job, Kind, parse_job, utc_timestamp
from gateway.outcomes import Outcome, Status, event_body
from gateway.prepare import prepare
from gateway.render import Renderer
from gateway.retry import backoff_seconds
from gateway.settings import Settings
from gateway.store import Claim, NewMessage, Store

log = structlog.get_logger("gateway.pipeline")


_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_RECORD_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class BackendUnavailable(Exception):
    """Raised after a batch was handed back to the broker because PostgreSQL failed."""


@dataclass(slots=True)
class _Parsed:
    delivery: Delivery
    job: Job
    kind: str
    recipient: str | None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Pipeline:
    """Processes batches of deliveries. Built once by the app with ready resources."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        broker: Broker,
        senders: Mapping[str, Sender],
        renderer: Renderer,
    ) -> None:
        self._settings = settings
        self._store = store
        self._broker = broker
        self._senders = senders
        self._renderer = renderer

    async def process(self, batch: Sequence[Delivery]) -> None:
        """Process and settle every delivery of ``batch``; raise BackendUnavailable on DB failure."""
        parsed = await self._parse(batch)
        if not parsed:
            return
        now = utcnow()
        unique: dict[str, _Parsed] = {}
        for item in parsed:
            unique.setdefault(item.job.id, item)
        try:
            claims = await self._store.claim(
                [_new_message(p) for p in unique.values()],
                lease_until=now + timedelta(seconds=self._settings.processing_lease_seconds),
                now=now,
            )
        except _DB_ERRORS as exc:
            # Nothing was sent: the whole batch goes back to the queue.
            await asyncio.gather(*(p.delivery.reject(requeue=True) for p in parsed))
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        outcomes = await asyncio.gather(*(self._deliver(unique[c.id], c) for c in claims))
        try:
            await self._record(outcomes)
        except _DB_ERRORS as exc:
            # Sent but not recorded: the claims stay "processing" until their lease lapses, then
            # the scheduler re-queues them (a duplicate send, bounded by this batch).
            await asyncio.gather(*(p.delivery.reject(requeue=True) for p in parsed))
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        events = [accepted_event(unique[c.id].job, unique[c.id].kind, now) for c in claims if c.inserted]
        events += [o.event() for o in outcomes]
        try:
            await self._broker.publish_events(events)
        except Exception as exc:  # outcomes are committed: a lost event must not resend anything
            log.error("events.publish_failed", count=len(events), error=str(exc))
        # Everything not claimed was a duplicate delivery of a message someone else owns or
        # finished: its outcome is already recorded, so it is acked without another send.
        await asyncio.gather(*(p.delivery.ack() for p in parsed))
        for outcome in outcomes:
            _log_outcome(outcome, unique[outcome.message_id])

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        # These messages were handed to providers: their outcomes are worth waiting for, since
        # giving up means sending them again later. Retry through a short outage.
        for delay in _RECORD_RETRIES:
            try:
                await self._store.record(outcomes)
                return
            except _DB_ERRORS as exc:
                log.warning("pipeline.record_retry", error=f"{type(exc).__name__}: {exc}", count=len(outcomes))
                await asyncio.sleep(delay)
        await self._store.record(outcomes)

    async def _parse(self, batch: Sequence[Delivery]) -> list[_Parsed]:
        parsed: list[_Parsed] = []
        dead: list[tuple[Delivery, str]] = []
        for delivery in batch:
            try:
                job = parse_job(delivery.body, max_bytes=self._settings.max_job_bytes)
            except InvalidJob as exc:
                dead.append((delivery, exc.reason))
                continue
            kind = kind_from_routing_key(delivery.routing_key) or (job.kind or Kind.promotional).value
            parsed.append(_Parsed(delivery, job, kind, job.address))
        if dead:
            await asyncio.gather(*(self._broker.dead_letter(d, reason) for d, reason in dead))
            await asyncio.gather(*(d.ack() for d, _ in dead))
            for _, reason in dead:
                log.warning("job.dead_lettered", reason=reason)
        return parsed

    async def _deliver(self, item: _Parsed, claim: Claim) -> Outcome:
        job, started = item.job, time.perf_counter()
        now = utcnow()
        outcome = Outcome(job.id, job.channel.value, item.kind, Status.sent, now)
        outcome.campaign_id = job.campaign_id
        if job.expires_at is not None and job.expires_at <= now:
            return _finish(outcome, Status.expired, "expires_at passed before sending")
        if job.send_at is not None and job.send_at > now:
            outcome.due_at = job.send_at
            outcome.detail = {"until": utc_timestamp(job.send_at)}
            return _finish(outcome, Status.deferred, "send_at is in the future")
        try:
            message = prepare(job, renderer=self._renderer, settings=self._settings)
        except MessageFailed as exc:
            return _finish(outcome, Status.failed, exc.reason)
        sender = self._senders.get(job.channel.value)
        if sender is None:
            return _finish(outcome, Status.failed, f"no sender configured for {job.channel.value}")
        try:
            # Bounded well inside the claim's lease, so the scheduler never re-queues a message
            # that is still being sent.
            async with asyncio.timeout(self._settings.processing_lease_seconds / 2):
                result = await sender.send(message)
        except TimeoutError:
            return self._retry_or_fail(outcome, claim.failures + 1, "provider timed out", None)
        except PermanentSendError as exc:
            return _finish(outcome, Status.failed, exc.reason)
        except TransientSendError as exc:
            return self._retry_or_fail(outcome, claim.failures + 1, exc.reason, exc.retry_after)
        except Exception as exc:  # an adapter bug must not kill the batch: retry, and say so
            log.exception("adapter.unexpected_error", message_id=job.id, channel=outcome.channel)
            return self._retry_or_fail(outcome, claim.failures + 1, f"adapter error: {exc}", None)
        outcome.at = utcnow()
        outcome.provider_message_id = result.provider_message_id
        outcome.detail = {"duration_ms": round((time.perf_counter() - started) * 1000, 1)}
        return outcome

    def _retry_or_fail(
        self, outcome: Outcome, failures: int, reason: str, retry_after: float | None
    ) -> Outcome:
        outcome.transient = True
        outcome.at = utcnow()
        if failures >= self._settings.max_attempts:
            return _finish(outcome, Status.failed, f"{reason} (gave up after {failures} attempts)")
        delay = backoff_seconds(
            failures,
            base=self._settings.retry_base_seconds,
            cap=self._settings.retry_max_seconds,
            retry_after=retry_after,
        )
        outcome.due_at = outcome.at + timedelta(seconds=delay)
        outcome.detail = {"until": utc_timestamp(outcome.due_at), "attempt": failures}
        return _finish(outcome, Status.deferred, reason)

def accepted_event(job: Job, kind: str, at: datetime) -> tuple[str, bytes]:
    """The ``message.accepted`` event, published when a job is first recorded."""
    return event_body(
        message_id=job.id,
        status=Status.accepted,
        channel=job.channel.value,
        kind=kind,
        at=at,
        campaign_id=job.campaign_id,
    )


def _finish(outcome: Outcome, status: Status, reason: str) -> Outcome:
    outcome.status = status
    outcome.reason = reason
    return outcome


def _new_message(item: _Parsed) -> NewMessage:
    job = item.job
    return NewMessage(
        id=job.id,
        channel=job.channel.value,
        kind=item.kind,
        job_json=item.delivery.body.decode(),
        recipient=item.recipient,
        campaign_id=job.campaign_id,
        send_at=job.send_at,
        expires_at=job.expires_at,
    )


def _log_outcome(outcome: Outcome, item: _Parsed) -> None:
    fields = {
        "message_id": outcome.message_id,
        "status": outcome.status.value,
        "channel": outcome.channel,
        "kind": outcome.kind,
        "to": item.recipient,
        "reason": outcome.reason,
        "campaign_id": outcome.campaign_id,
        **outcome.detail,
    }
    log.info("message.outcome", **{k: v for k, v in fields.items() if v is not None})
