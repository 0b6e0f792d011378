"""The durable scheduler: re-queue messages whose time has come.

Deferred messages (``send_at``, retry backoff) and lapsed claims (a consumer died, an HTTP
accept whose publish was lost) are taken with ``FOR UPDATE SKIP LOCKED`` and marked ``queued``
in the same statement, so with several replicas each due message is re-queued by exactly one.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from gateway.broker import Broker, routing_key_for
from gateway.outcomes import utcnow
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
    ) -> None:
        self._store = store
        self._broker = broker
        self._interval = interval
        self._requeue_after = timedelta(seconds=requeue_after)
        self._batch = batch

    async def run(self) -> None:
        """Loop forever; errors are logged and retried at the next tick."""
        while True:
            try:
                count = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduler.tick_failed", error=f"{type(exc).__name__}: {exc}")
                count = 0
            if count < self._batch:
                await asyncio.sleep(self._interval)

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
