"""The life of a batch of jobs: parse, claim, decide, grant caps, dispatch, record, announce, ack.

Per batch, whatever its size: one statement claims it (idempotency by job id) and brings back
what the policy needs (users, endpoints, opt-outs, rules) and which version of each stored
template is the latest (the bodies come from a cache; a version never seen before costs one
more query); one grants cap slots; one records every outcome with its events and deliveries;
one write publishes the events. Sends run concurrently. A job is acked only after its outcome
is committed; if PostgreSQL fails, the batch goes back to the queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Sequence

import asyncpg
import orjson
import structlog

from adapters.base import Sender
from gateway.addresses import normalise_address, normalise_phone
from gateway.broker import Broker, Delivery, kind_from_routing_key
from gateway.decide import Incoming, PolicyMemo, Ready, decide, outcome_of
from gateway.dispatch import Dispatcher
from gateway.errors import InvalidJob, MessageFailed
from gateway.jobs import Job, Kind, parse_job, utc_timestamp
from gateway.metrics import Metrics
from gateway.outcomes import Outcome, Status, event_body, utcnow
from gateway.policy import QuietHoursCache
from gateway.render import Renderer
from gateway.settings import Settings
from gateway.store import Claim, DeliveryRecord, EndpointEffect, NewMessage, Store
from gateway.templates import (
    TemplateCache,
    TemplateKey,
    TemplateVersion,
    load_many,
    not_found_reason,
)

log = structlog.get_logger("gateway.pipeline")

_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_RECORD_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

__all__ = ["BackendUnavailable", "Pipeline", "accepted_event", "utcnow"]


class BackendUnavailable(Exception):
    """Raised after a batch was handed back to the broker because PostgreSQL failed."""


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
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._broker = broker
        self._metrics = metrics
        self._dispatcher = Dispatcher(
            settings=settings, senders=senders, renderer=renderer, metrics=metrics
        )
        self._templates = TemplateCache()
        self._nights = QuietHoursCache()

    async def process(self, batch: Sequence[Delivery]) -> None:
        """Process and settle every delivery of ``batch``; raise BackendUnavailable on DB failure."""
        parsed, dead = self._parse(batch)
        # The invalid jobs are copied to gateway.dead while the good ones of the batch go on: a
        # copy waits for the broker's confirm, which for a 10 MB body means its disk, and the
        # good jobs should not. The batch is done when both are.
        aside = asyncio.ensure_future(self._set_aside(dead)) if dead else None
        try:
            await self._process_parsed(parsed)
        finally:
            if aside is not None:
                await aside

    async def _process_parsed(self, parsed: list[Incoming]) -> None:
        if not parsed:
            return
        now = utcnow()
        unique: dict[str, Incoming] = {}
        for item in parsed:
            unique.setdefault(item.job.id, item)
        try:
            claims = await self._store.claim(
                [_new_message(p, self._settings.sms_from) for p in unique.values()],
                lease_until=now + timedelta(seconds=self._settings.processing_lease_seconds),
                now=now,
            )
            # The claim said which version "latest" is: bodies come from the cache, and only
            # versions never seen before cost a statement.
            templates = await self._load_templates(claims, unique)
            memo = PolicyMemo(utcnow(), self._nights)
            decided = [decide(unique[c.id], c, memo.now, memo) for c in claims]
            _apply_templates(decided, templates)
            ready = await self._grant(decided)
        except _DB_ERRORS as exc:
            # Nothing was sent: the whole batch goes back to the queue.
            await asyncio.gather(*(p.delivery.reject(requeue=True) for p in parsed))
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        outcomes = [d for d in decided if isinstance(d, Outcome)]
        deliveries: list[DeliveryRecord] = []
        effects: list[EndpointEffect] = []
        for done in await asyncio.gather(*(self._dispatcher.dispatch(r) for r in ready)):
            outcomes.append(done.outcome)
            deliveries += done.records
            effects += [replace(e, message_id=done.outcome.message_id) for e in done.effects]
        try:
            await self._record(outcomes, deliveries, effects)
        except _DB_ERRORS as exc:
            # Sent but not recorded: the claims stay "processing" until their lease lapses, then
            # the scheduler re-queues them (a duplicate send, bounded by this batch).
            await asyncio.gather(*(p.delivery.reject(requeue=True) for p in parsed))
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        events = [accepted_event(unique[c.id].job, unique[c.id].kind, now) for c in claims if c.inserted]
        events += [o.event() for o in outcomes]
        events += [endpoint_event(e, now) for e in effects]
        try:
            await self._broker.publish_events(events)
        except Exception as exc:  # outcomes are committed: a lost event must not resend anything
            log.error("events.publish_failed", count=len(events), error=str(exc))
        # Everything not claimed was a duplicate delivery of a message someone else owns or
        # finished: its outcome is already recorded, so it is acked without another send.
        await self._broker.ack_all([p.delivery for p in parsed])
        started = {c.id: _clock_start(c, unique[c.id].job) for c in claims}
        self._metrics.count_outcomes(outcomes, started)
        # Asked once a batch: below the level, building each line's fields is all it costs.
        if log.is_enabled_for(logging.INFO):
            for outcome in outcomes:
                _log_outcome(outcome, unique[outcome.message_id])

    async def _load_templates(
        self, claims: Iterable[Claim], unique: Mapping[str, Incoming]
    ) -> dict[TemplateKey, TemplateVersion]:
        """The template of each claimed job that names one, by the job's own key (a version
        asked for without one is the latest, as the claim read it). Versions are immutable:
        those in the cache cost nothing, the others one query for the batch. A key left out
        names an unknown or deleted template, or a version that does not exist."""
        resolved: dict[TemplateKey, tuple[str, int]] = {}  # the job's key -> the version to load
        for claim in claims:
            job = unique[claim.id].job
            if job.template is None:
                continue
            if job.template_version is not None:
                pinned = (job.template, job.template_version)
                resolved[pinned] = pinned
            elif claim.template_latest is not None:
                resolved[(job.template, None)] = (job.template, claim.template_latest)
        if not resolved:
            return {}
        wanted = set(resolved.values())
        found = await load_many(self._store.pool, wanted, cache=self._templates)
        return {key: found[version] for key, version in resolved.items() if version in found}

    async def _grant(self, decided: list[Outcome | Ready]) -> list[Ready]:
        """Ask for every cap slot of the batch at once; turn refusals into suppressed outcomes."""
        ready = [d for d in decided if isinstance(d, Ready)]
        refusals = await self._store.grant_caps([r.cap for r in ready if r.cap is not None])
        granted = []
        for index, item in enumerate(decided):
            if not isinstance(item, Ready):
                continue
            reason = refusals.get(item.incoming.job.id)
            if reason is None:
                granted.append(item)
                continue
            decided[index] = outcome_of(item.incoming, Status.suppressed, reason)
        return granted

    async def _record(
        self,
        outcomes: Sequence[Outcome],
        deliveries: Sequence[DeliveryRecord],
        effects: Sequence[EndpointEffect],
    ) -> None:
        # These messages were handed to providers: their outcomes are worth waiting for, since
        # giving up means sending them again later. Retry through a short outage.
        for delay in _RECORD_RETRIES:
            try:
                await self._store.record(outcomes, deliveries, effects)
                return
            except _DB_ERRORS as exc:
                log.warning("pipeline.record_retry", error=f"{type(exc).__name__}: {exc}",
                            count=len(outcomes))
                await asyncio.sleep(delay)
        await self._store.record(outcomes, deliveries, effects)

    def _parse(
        self, batch: Sequence[Delivery]
    ) -> tuple[list[Incoming], list[tuple[Delivery, str]]]:
        """The valid jobs of ``batch``, and the deliveries that can never be processed, each
        with its reason."""
        parsed: list[Incoming] = []
        dead: list[tuple[Delivery, str]] = []
        for delivery in batch:
            try:
                job = parse_job(delivery.body, max_bytes=self._settings.max_job_bytes)
            except InvalidJob as exc:
                dead.append((delivery, exc.reason))
                continue
            kind = kind_from_routing_key(delivery.routing_key) or (job.kind or Kind.promotional).value
            parsed.append(Incoming(delivery, job, kind, recipient_of(job)))
        return parsed, dead

    async def _set_aside(self, dead: list[tuple[Delivery, str]]) -> None:
        """Copy each to gateway.dead with its reason, then ack it (never before: nothing lost)."""
        await asyncio.gather(*(self._broker.dead_letter(d, reason) for d, reason in dead))
        await self._broker.ack_all([d for d, _ in dead])
        for _, reason in dead:
            log.warning("job.dead_lettered", reason=reason)


def recipient_of(job: Job) -> str | None:
    """The raw address in its normal form (as opt-outs store it); as given when it is invalid."""
    if job.address is None:
        return None
    try:
        return normalise_address(job.channel.value, job.address)
    except MessageFailed:
        return job.address  # fails with the reason when the message is prepared


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


def endpoint_event(effect: EndpointEffect, at: datetime) -> tuple[str, bytes]:
    """``endpoint.opted_out`` or ``endpoint.token_invalid``, learnt from a provider's answer."""
    body = {
        "event": f"endpoint.{effect.kind}",
        "channel": effect.channel,
        "address": effect.address,
        "message_id": effect.message_id,
        "source": "provider",
        "timestamp": utc_timestamp(at),
    }
    return f"endpoint.{effect.kind}", orjson.dumps(body)


def _clock_start(claim: Claim, job: Job) -> datetime | None:
    """Where end-to-end latency counts from: the message first recorded (by the API, or by the
    consumer that first saw it), or its ``send_at`` when that is later: a scheduled wait is
    asked for, not latency."""
    if claim.created_at is None or job.send_at is None:
        return claim.created_at
    return max(claim.created_at, job.send_at)


def _apply_templates(
    decided: list[Outcome | Ready], found: Mapping[TemplateKey, TemplateVersion]
) -> None:
    """Give each ready job that names a template its version; fail those not found."""
    for index, item in enumerate(decided):
        if not isinstance(item, Ready) or item.incoming.job.template is None:
            continue
        key = (item.incoming.job.template, item.incoming.job.template_version)
        item.template = found.get(key)
        if item.template is None:
            decided[index] = outcome_of(item.incoming, Status.failed, not_found_reason(key))


def _new_message(item: Incoming, default_sms_from: str | None) -> NewMessage:
    job = item.job
    sender = None
    if job.channel.value == "sms":
        try:
            sender = normalise_phone(job.from_ or default_sms_from or "")
        except MessageFailed:
            sender = job.from_ or default_sms_from
    return NewMessage(
        id=job.id,
        channel=job.channel.value,
        kind=item.kind,
        job_json=item.delivery.body.decode(),
        recipient=item.recipient,
        campaign_id=job.campaign_id,
        send_at=job.send_at,
        expires_at=job.expires_at,
        user_id=getattr(job.to, "user_id", None),
        sender=sender,
        template=job.template if job.template_version is None else None,
    )


def _log_outcome(outcome: Outcome, item: Incoming) -> None:
    fields = {
        "message_id": outcome.message_id,
        "status": outcome.status.value,
        "channel": outcome.channel,
        "kind": outcome.kind,
        "to": item.recipient or f"user:{getattr(item.job.to, 'user_id', '')}",
        "reason": outcome.reason,
        "campaign_id": outcome.campaign_id,
        **outcome.detail,
    }
    log.info("message.outcome", **{k: v for k, v in fields.items() if v is not None})
