"""Prometheus metrics: one registry per gateway, owned by the app, served at ``GET /metrics``.

Everything is counted in memory where it happens (an outcome, a provider request, an inbound
message), so the hot path makes no database round trip for metrics. The one gauge read from
the database, the deferred backlog, is refreshed by the scheduler at most every few seconds.

Label values are bounded: channels, kinds, statuses, sender keys and short reason codes, never
an address, a message id or a provider's free-text error. That also lets the hot path keep each
labelled child once found (:class:`Children`) instead of calling ``labels()`` per event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Generic, Iterable, Mapping, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.outcomes import FINAL, Outcome, Status

__all__ = ["METRICS", "Children", "Metrics", "metrics_routes", "suppression_reason"]

# Suppression reasons as label values; anything else is counted as "other".
SUPPRESSION_REASONS = frozenset({"opted_out", "daily_cap", "campaign_cap"})

# Seconds. End-to-end spans queue waits and retries; a provider request is usually sub-second.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The event loop's lag: a healthy loop answers within a millisecond or two.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A labelled metric's children by label values: ``children(*values)`` is ``labels()``, kept.

    prometheus-client's ``labels()`` validates its arguments, builds a tuple of strings and
    takes a lock on every call, which costs as much as the ``inc()`` or ``observe()`` after
    it; a hit here is one dict lookup. The dict holds no more than the metric itself keeps
    (label values are bounded). Do not ``remove()`` or ``clear()`` a metric read through one:
    the kept child would outlive its series and count into nothing.
    """

    __slots__ = ("metric", "_children")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        """The child for these label values, made by ``labels()`` the first time."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child

    def __len__(self) -> int:
        return len(self._children)


class Metrics:
    """The gateway's metrics in a :class:`CollectorRegistry` of their own (never the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "gateway_messages", "Messages that reached a final status",
            ["channel", "kind", "status"], registry=r,
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "From the message first recorded (or its send_at) to the provider accepting it",
            ["channel", "kind"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.provider_latency = Histogram(
            "gateway_provider_request_seconds", "Duration of one send through a sender",
            ["provider"], buckets=_REQUEST_BUCKETS, registry=r,
        )
        self.provider_errors = Counter(
            "gateway_provider_errors", "Sends a provider did not accept, by error class",
            ["provider", "reason"], registry=r,
        )
        self.suppressions = Counter(
            "gateway_suppressions", "Messages suppressed by policy or opt-out",
            ["channel", "reason"], registry=r,
        )
        self.deferred = Gauge(
            "gateway_deferred_messages",
            "Messages waiting in status deferred (refreshed by the scheduler)", registry=r,
        )
        self.in_flight = Gauge(
            "gateway_consumer_in_flight", "Jobs received by this consumer and not yet settled",
            registry=r,
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How much later than due the event loop ran a timer (sampled every 0.25 s)",
            buckets=_LAG_BUCKETS, registry=r,
        )
        self.inbound = Counter(
            "gateway_inbound_messages", "Inbound SMS processed (retried webhooks not counted)",
            ["provider", "action"], registry=r,
        )
        # The hot path's children, kept (see Children).
        self._messages = Children(self.messages)
        self._delivery_latency = Children(self.delivery_latency)
        self._provider_latency = Children(self.provider_latency)
        self._provider_errors = Children(self.provider_errors)
        self._suppressions = Children(self.suppressions)

    def count_outcomes(
        self, outcomes: Iterable[Outcome], started: Mapping[str, datetime | None]
    ) -> None:
        """Count recorded outcomes; time each ``sent`` one from ``started[message_id]``."""
        for outcome in outcomes:
            if outcome.status not in FINAL:
                continue
            self._messages(outcome.channel, outcome.kind, outcome.status.value).inc()
            if outcome.status is Status.suppressed:
                reason = suppression_reason(outcome.reason)
                self._suppressions(outcome.channel, reason).inc()
            elif outcome.status is Status.sent:
                since = started.get(outcome.message_id)
                if since is not None:
                    seconds = max(0.0, (outcome.at - since).total_seconds())
                    self._delivery_latency(outcome.channel, outcome.kind).observe(seconds)

    def observe_request(self, provider: str, seconds: float, error: str | None) -> None:
        """One send through ``provider`` took ``seconds``; ``error`` is its class, if it failed."""
        self._provider_latency(provider).observe(seconds)
        if error is not None:
            self._provider_errors(provider, error).inc()

    def watch_in_flight(self, source: Callable[[], int]) -> None:
        """Read the in-flight gauge from ``source`` at each scrape."""
        self.in_flight.set_function(lambda: float(source()))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def suppression_reason(reason: str | None) -> str:
    """A suppression reason as a label: ``opted_out (21610: …)`` → ``opted_out``."""
    head = (reason or "").split(" ", 1)[0]
    return head if head in SUPPRESSION_REASONS else "other"


METRICS = web.AppKey("metrics", Metrics)


async def get_metrics(request: web.Request) -> web.Response:
    """The metrics in the Prometheus text format (no bearer token: outside ``/v1``)."""
    return web.Response(
        body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def metrics_routes() -> list[web.RouteDef]:
    """``GET /metrics``, for :func:`gateway.api.create_app`."""
    return [web.get("/metrics", get_metrics)]
