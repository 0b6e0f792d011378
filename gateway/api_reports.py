"""``GET /v1/reports/deliverability``: sent, delivered, failed, suppressed and opt-outs by day.

Query parameters, all optional: ``from`` and ``to`` (UTC dates, both included; default the last
30 days to today), ``channel``, ``campaign_id``. The figures come from :mod:`gateway.reports`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, timedelta

from aiohttp import web

from gateway.api import json_response, requires
from gateway.api_support import invalid, pool_of
from gateway.keys import Scope
from gateway.outcomes import utcnow
from gateway.reports import MAX_DAYS, ReportQuery, deliverability

__all__ = ["report_routes"]

CHANNELS = ("email", "sms", "push")
_CAMPAIGN_ID = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
DEFAULT_DAYS = 30
# Room on both sides for the default range and the end of the last day.
_EARLIEST, _LATEST = date(1970, 1, 1), date(9999, 12, 30)


def report_routes() -> list[web.RouteDef]:
    """The routes of this module, for :func:`gateway.api.create_app`."""
    return [web.get("/v1/reports/deliverability", get_deliverability)]


@requires(Scope.read)
async def get_deliverability(request: web.Request) -> web.Response:
    """The deliverability report for the range and filters of the query string."""
    return json_response(await deliverability(pool_of(request), report_query(request.query)))


def report_query(params: Mapping[str, str]) -> ReportQuery:
    """The query string as a :class:`ReportQuery`; 422 naming the parameter otherwise."""
    end = _date(params, "to") or utcnow().date()
    start = _date(params, "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise invalid("from: must not be after to")
    if (end - start).days + 1 > MAX_DAYS:
        raise invalid(f"from: the range may cover at most {MAX_DAYS} days")
    channel = params.get("channel") or None
    if channel is not None and channel not in CHANNELS:
        raise invalid(f"channel: must be one of {', '.join(CHANNELS)}")
    return ReportQuery(start, end, channel=channel, campaign_id=campaign_id_of(params))


def campaign_id_of(params: Mapping[str, str]) -> str | None:
    """The ``campaign_id`` parameter: 1-128 characters, no control characters."""
    campaign_id = params.get("campaign_id") or None
    if campaign_id is not None and not _CAMPAIGN_ID.fullmatch(campaign_id):
        raise invalid("campaign_id: 1-128 characters without control characters")
    return campaign_id


def _date(params: Mapping[str, str], name: str) -> date | None:
    text = params.get(name)
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or not _EARLIEST <= day <= _LATEST:
        raise invalid(f"{name}: a date such as 2024-05-31 expected") from None
    return day
