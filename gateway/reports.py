"""The deliverability report: what became of the messages created in a range of UTC days.

Counted from ``messages`` by creation day (a message created on Monday and delivered on Tuesday
counts on Monday), so a day's numbers settle as its messages finish. Three statements, run
concurrently, each an index-only scan over the range (``migrations/008_reporting.sql``):

- statuses per day, over ``messages_created_idx`` (or ``messages_campaign_created_idx`` for
  one campaign): ``(created_at) INCLUDE (channel, status)``;
- suppressions per day and reason, over the partial ``messages_suppressed_idx``;
- opt-outs per day, over ``opt_outs_listing_idx``.

The statement text is assembled from fixed fragments so that each filter combination gets its
own plan: a ``$n IS NULL OR …`` condition would keep the campaign index out of a generic plan.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import asyncpg

from gateway.metrics import suppression_reason

__all__ = ["MAX_DAYS", "ReportQuery", "deliverability"]

MAX_DAYS = 366

# Midnight UTC: date_bin() then cuts time into UTC days.
_DAY = "date_bin('1 day', created_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"

_STATUSES = f"""
SELECT {_DAY} AS day, status, count(*) AS n
FROM messages
WHERE created_at >= $1 AND created_at < $2{{filters}}
GROUP BY 1, 2
"""

_SUPPRESSIONS = f"""
SELECT {_DAY} AS day, split_part(coalesce(reason, ''), ' ', 1) AS reason, count(*) AS n
FROM messages
WHERE status = 'suppressed' AND created_at >= $1 AND created_at < $2{{filters}}
GROUP BY 1, 2
"""

_OPT_OUTS = f"""
SELECT {_DAY} AS day, count(*) AS n
FROM opt_outs
WHERE created_at >= $1 AND created_at < $2{{filters}}
GROUP BY 1
"""

# Statuses as the report counts them: "sent" is every message a provider accepted, whatever a
# receipt said afterwards; "pending" is not final yet.
_SENT = frozenset({"sent", "delivered", "undelivered"})
_PENDING = frozenset({"queued", "processing", "deferred"})
_FIELDS = ("delivered", "undelivered", "failed", "expired")


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """UTC days ``start`` to ``end``, both included; ``None`` filters are not applied."""

    start: date
    end: date
    channel: str | None = None
    campaign_id: str | None = None

    @property
    def days(self) -> list[date]:
        """Every day of the range, in order."""
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


async def deliverability(pool: asyncpg.Pool, query: ReportQuery) -> dict[str, Any]:
    """The report: totals over the range and the same figures for every day of it."""
    start = datetime.combine(query.start, time(), timezone.utc)
    end = datetime.combine(query.end + timedelta(days=1), time(), timezone.utc)
    filters, args = _filters(query)
    statements = [
        pool.fetch(_STATUSES.format(filters=filters), start, end, *args),
        pool.fetch(_SUPPRESSIONS.format(filters=filters), start, end, *args),
    ]
    if query.campaign_id is None:
        # Opt-outs are not tied to the message that caused them: per channel, never per campaign.
        channel = (" AND channel = $3", [query.channel]) if query.channel else ("", [])
        statements.append(pool.fetch(_OPT_OUTS.format(filters=channel[0]), start, end, *channel[1]))
    statuses, suppressions, *found = await asyncio.gather(*statements)
    opt_outs = found[0] if found else None
    days: dict[date, _Day] = {day: _Day() for day in query.days}
    for row in statuses:
        days[_utc_day(row["day"])].statuses[row["status"]] += row["n"]
    for row in suppressions:
        days[_utc_day(row["day"])].reasons[suppression_reason(row["reason"])] += row["n"]
    for row in opt_outs or ():
        days[_utc_day(row["day"])].opt_outs += row["n"]
    total = _Day()
    for day in days.values():
        total.add(day)
    with_opt_outs = opt_outs is not None
    return {
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "channel": query.channel,
        "campaign_id": query.campaign_id,
        **total.to_json(with_opt_outs),
        "days": [{"date": d.isoformat(), **f.to_json(with_opt_outs)} for d, f in days.items()],
    }


def _filters(query: ReportQuery) -> tuple[str, list[Any]]:
    """The extra conditions (numbered from $3) and their arguments."""
    conditions, args = [], []
    for column, value in (("channel", query.channel), ("campaign_id", query.campaign_id)):
        if value is not None:
            args.append(value)
            conditions.append(f" AND {column} = ${len(args) + 2}")
    return "".join(conditions), args


def _utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


class _Day:
    """The counts of one day (or of the whole range)."""

    __slots__ = ("opt_outs", "reasons", "statuses")

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.opt_outs = 0

    def add(self, other: _Day) -> None:
        self.statuses.update(other.statuses)
        self.reasons.update(other.reasons)
        self.opt_outs += other.opt_outs

    def to_json(self, with_opt_outs: bool) -> dict[str, Any]:
        counts = self.statuses
        sent = sum(counts[s] for s in _SENT)
        attempted = sent + counts["failed"]
        reasons = dict(sorted(self.reasons.items()))
        return {
            "messages": sum(counts.values()),
            "sent": sent,
            **{name: counts[name] for name in _FIELDS},
            "pending": sum(counts[s] for s in _PENDING),
            "suppressed": {"total": counts["suppressed"], "by_reason": reasons},
            "opt_outs": self.opt_outs if with_opt_outs else None,
            # Of the messages handed to a provider (accepted or refused), the share accepted and
            # not reported undelivered since.
            "delivery_rate": (
                round((sent - counts["undelivered"]) / attempted, 4) if attempted else None
            ),
        }
