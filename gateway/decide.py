"""Per-message policy decisions, pure given the claim's context and the current instant.

In order: expiry, ``send_at``, recipients (the raw address, or the user's active endpoints),
opt-outs, then — for promotional jobs, and transactional ones unless they bypass policy —
quiet hours in the recipient's time zone and the cap slot to ask for. The answer is either a
final or deferring :class:`~gateway.outcomes.Outcome`, or a :class:`Ready` message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from gateway.broker import Delivery
from gateway.jobs import Job, Kind, utc_timestamp
from gateway.outcomes import Outcome, Status, utcnow
from gateway.policy import QuietHours, QuietHoursCache, local_day, resolve_zone
from gateway.rules import CampaignRules, Limits, effective_daily_cap, effective_quiet_hours
from gateway.store import CapRequest, Claim
from gateway.templates import TemplateVersion


@dataclass(slots=True)
class Incoming:
    """A parsed job of a batch with the delivery that brought it."""

    delivery: Delivery
    job: Job
    kind: str
    recipient: str | None  # the normalised raw address, when the job names one


@dataclass(slots=True)
class Ready:
    """A message cleared by policy: send it to ``targets`` once its cap slot (if any) is granted."""

    incoming: Incoming
    claim: Claim
    targets: list[str]
    opted_out: list[str] = field(default_factory=list)
    cap: CapRequest | None = None
    template: TemplateVersion | None = None  # loaded for the batch when the job names one


class PolicyMemo:
    """What ``decide`` derives from inputs a whole batch shares, worked out once per batch.

    Every claim of a batch carries the same global policy (and few campaigns), and most
    recipients share a handful of zones: parsing the rules and placing the quiet-hours windows
    for each message was a third of ``decide``'s cost. Keyed by the identity of the claims'
    rule objects, so a memo must not outlive the claims it was used with: build one per batch.
    """

    __slots__ = ("now", "_limits", "_campaigns", "_quiet", "_days", "_nights")

    def __init__(self, now: datetime, nights: QuietHoursCache | None = None) -> None:
        """``nights``: a cache of quiet intervals that outlives batches (the pipeline's); by
        default one for this memo alone."""
        self.now = now
        self._limits: dict[int, Limits] = {}
        self._campaigns: dict[int, CampaignRules] = {}
        self._quiet: dict[tuple[ZoneInfo, QuietHours], datetime | None] = {}
        self._days: dict[ZoneInfo, date] = {}
        self._nights = nights if nights is not None else QuietHoursCache()

    def limits(self, rules: Mapping[str, Any] | None) -> Limits:
        """``Limits.from_json(rules)``, parsed once per rules object."""
        found = self._limits.get(id(rules))
        if found is None:
            found = self._limits[id(rules)] = Limits.from_json(rules)
        return found

    def campaign(self, rules: Mapping[str, Any] | None) -> CampaignRules:
        """``CampaignRules.from_json(rules)``, parsed once per rules object."""
        found = self._campaigns.get(id(rules))
        if found is None:
            found = self._campaigns[id(rules)] = CampaignRules.from_json(rules)
        return found

    def quiet_hours_end(self, zone: ZoneInfo, window: QuietHours) -> datetime | None:
        """When quiet hours end at ``now`` in ``zone``, or ``None`` outside them."""
        key = (zone, window)
        if key not in self._quiet:
            self._quiet[key] = self._nights.end(self.now, zone, window)
        return self._quiet[key]

    def local_day(self, zone: ZoneInfo) -> date:
        """The date at ``now`` in ``zone``."""
        found = self._days.get(zone)
        if found is None:
            found = self._days[zone] = local_day(self.now, zone)
        return found


def decide(
    incoming: Incoming, claim: Claim, now: datetime, memo: PolicyMemo | None = None
) -> Outcome | Ready:
    """What to do with one claimed message at ``now`` (``memo``: shared by a batch, same ``now``)."""
    if memo is None or memo.now != now:
        memo = PolicyMemo(now)
    job = incoming.job
    outcome = Outcome(job.id, job.channel.value, incoming.kind, Status.sent, now)
    outcome.campaign_id = job.campaign_id
    if job.expires_at is not None and job.expires_at <= now:
        return finish(outcome, Status.expired, "expires_at passed before sending")
    if job.send_at is not None and job.send_at > now:
        return defer(outcome, job.send_at, "send_at is in the future")
    targets = _targets(incoming, claim)
    if isinstance(targets, str):
        return finish(outcome, Status.failed, targets)
    allowed = [t for t in targets if t not in claim.opted_out]
    if not allowed:
        return finish(outcome, Status.suppressed, "opted_out")
    ready = Ready(incoming, claim, allowed, [t for t in targets if t in claim.opted_out])
    limits = memo.limits(claim.policy_rules)
    if incoming.kind == Kind.transactional.value and limits.transactional_bypass:
        return ready
    campaign = memo.campaign(claim.campaign_rules) if claim.campaign_found else None
    zone = _zone(claim.timezone, limits.default_timezone)
    window = effective_quiet_hours(limits, campaign)
    end = memo.quiet_hours_end(zone, window) if window is not None else None
    if end is not None:
        if job.expires_at is not None and job.expires_at <= end:
            return finish(outcome, Status.expired, "expires_at falls within quiet hours")
        return defer(outcome, end, "quiet_hours")
    if not claim.cap_granted:
        ready.cap = _cap_request(incoming, claim, limits, campaign, memo.local_day(zone))
    return ready


def _targets(incoming: Incoming, claim: Claim) -> list[str] | str:
    """The addresses to send to, or the reason there are none."""
    job = incoming.job
    if incoming.recipient is not None:
        return [incoming.recipient]
    user_id = getattr(job.to, "user_id", "")
    if not claim.user_found:
        return f"unknown user {user_id!r}"
    if not claim.endpoints:
        return f"user {user_id!r} has no active {job.channel.value} endpoint"
    # On a retry, only the endpoints an earlier attempt did not finish.
    return [e for e in claim.endpoints if e not in claim.delivered] or claim.endpoints


def _zone(name: str | None, default: str) -> ZoneInfo:
    try:
        return resolve_zone(name, default)
    except ValueError:
        # A zone the tz database no longer knows must not block sending: use the default.
        return resolve_zone(None, default)


def _cap_request(
    incoming: Incoming, claim: Claim, limits: Limits, campaign: CampaignRules | None, day: date
) -> CapRequest | None:
    job = incoming.job
    daily = effective_daily_cap(limits, campaign)
    per_channel = limits.daily_cap_per_channel.get(job.channel.value)
    campaign_cap = campaign.cap if campaign is not None else None
    if daily is None and per_channel is None and campaign_cap is None:
        return None
    return CapRequest(
        message_id=job.id,
        recipient=recipient_key(incoming),
        day=day,
        channel=job.channel.value,
        daily_cap=daily,
        channel_cap=per_channel,
        campaign_id=job.campaign_id,
        campaign_cap=campaign_cap,
    )


def recipient_key(incoming: Incoming) -> str:
    """Whom a cap counts for: the user, or the raw address on its channel."""
    job = incoming.job
    user_id = getattr(job.to, "user_id", None)
    if user_id is not None:
        return f"user:{user_id}"
    return f"address:{job.channel.value}:{incoming.recipient}"


def outcome_of(incoming: Incoming, status: Status, reason: str | None) -> Outcome:
    """A fresh outcome for ``incoming`` with ``status`` and ``reason``, stamped now."""
    job = incoming.job
    outcome = Outcome(job.id, job.channel.value, incoming.kind, status, utcnow(), reason)
    outcome.campaign_id = job.campaign_id
    return outcome


def finish(outcome: Outcome, status: Status, reason: str | None) -> Outcome:
    """Set the outcome's status and reason; return it."""
    outcome.status = status
    outcome.reason = reason
    return outcome


def defer(outcome: Outcome, until: datetime, reason: str) -> Outcome:
    """Defer the message to ``until`` (the scheduler re-queues it then)."""
    outcome.due_at = until
    outcome.detail = {"until": utc_timestamp(until)}
    return finish(outcome, Status.deferred, reason)
