"""The durable scheduler: re-queue messages whose time has come.

Deferred messages (``send_at``, retry backoff) and lapsed claims (a consumer died, an HTTP
accept whose publish was lost) are taken with ``FOR UPDATE SKIP LOCKED`` and marked ``queued``
in the same statement, so with several replicas each due message is re-queued by exactly one.

Between ticks, the loop also refreshes the ``gateway_deferred_messages`` gauge (one index-only
count, at most every ``backlog_every`` seconds) and, when retention is on, starts the daily
purge in a task of its own every ``retention_every`` seconds (:mod:`gateway.retention` decides
whether one is due and keeps replicas from purging together).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog

from gateway.broker import Broker, routing_key_for
from gateway.metrics import Metrics
from gateway.outcomes import utcnow
from gateway.retention import Retention
from gateway.store import Store

log = structlog.get_logger("gateway.scheduler")


class Scheduler:
    """Polls for due messages every ``interval`` seconds; ``run`` until cancelled."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        interval: float,
        requeue_after: float,
        batch: int = 500,
        metrics: Metrics | None = None,
        backlog_every: float = 5.0,
        retention: Retention | None = None,
        retention_every: float = 3600.0,
    ) -> None:
        self._store = store
        self._broker = broker
        self._interval = interval
        self._requeue_after = timedelta(seconds=requeue_after)
        self._batch = batch
        self._metrics = metrics
        self._backlog_every = backlog_every
        self._backlog_next = 0.0
        self._retention = retention
        self._retention_every = retention_every
        self._retention_next = 0.0
        self._purge: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Loop forever; errors are logged and retried at the next tick."""
        try:
            while True:
                try:
                    count = await self.tick()
                except Exception as exc:
                    log.warning("scheduler.tick_failed", error=f"{type(exc).__name__}: {exc}")
                    count = 0
                try:
                    await self._housekeeping()
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("scheduler.housekeeping_failed", error=error)
                if count < self._batch:
                    await asyncio.sleep(self._interval)
        finally:
            if self._purge is not None:
                self._purge.cancel()
                await asyncio.gather(self._purge, return_exceptions=True)

    async def _housekeeping(self) -> None:
        """Refresh the backlog gauge and start the daily purge, each when its time has come."""
        now = time.monotonic()
        if self._metrics is not None and now >= self._backlog_next:
            self._backlog_next = now + self._backlog_every
            deferred = await self._store.pool.fetchval(
                "SELECT count(*) FROM messages WHERE status = 'deferred'"
            )
            self._metrics.deferred.set(deferred)
        idle = self._purge is None or self._purge.done()
        if self._retention is not None and now >= self._retention_next and idle:
            self._retention_next = now + self._retention_every
            self._purge = asyncio.create_task(self._run_purge(self._retention), name="purge")

    async def _run_purge(self, retention: Retention) -> None:
        try:
            await retention.run_if_due()
        except Exception as exc:  # the next check tries again
            log.warning("retention.failed", error=f"{type(exc).__name__}: {exc}")

    async def tick(self) -> int:
        """Re-queue one batch of due messages; return how many were taken."""
        now = utcnow()
        due = await self._store.claim_due(
            limit=self._batch, requeue_at=now + self._requeue_after, now=now
        )
        if not due:
            return 0
        results = await asyncio.gather(
            *(
                self._broker.publish_job(
                    m.job_json.encode(), routing_key=routing_key_for(m.kind), message_id=m.id
                )
                for m in due
            ),
            return_exceptions=True,
        )
        failed = [m.id for m, r in zip(due, results) if isinstance(r, BaseException)]
        if failed:
            await self._store.make_due(failed, now=utcnow())
            log.warning("scheduler.publish_failed", count=len(failed))
        log.info("scheduler.requeued", count=len(due) - len(failed))
        return len(due)
