"""Wiring and lifecycle: build every resource from the settings, run, shut down in order.

``Gateway`` is what ``gateway serve`` and ``gateway dev`` run, and what the tests start in
process. Resources are built here and passed down; nothing is global.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import asyncpg
import structlog
from aiohttp import web

from adapters.base import Sender
from gateway.amqp import AmqpBroker
from gateway.api import create_app
from gateway.broker import Broker
from gateway.intake import Intake
from gateway.loop_lag import watch_loop_lag
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.planner_stats import PlannerStats
from gateway.render import Renderer
from gateway.retention import Retention
from gateway.scheduler import Scheduler
from gateway.senders import build_senders
from gateway.settings import Settings
from gateway.store import Store

log = structlog.get_logger("gateway.app")


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's default reset.

    The default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``
    on every release: one more round trip (and commit) per statement, half of all the hot
    path's round trips. The gateway keeps no session state on pooled connections (no LISTEN,
    no SET, no session advisory lock: the only one, in ``migrate``, is on its own connection),
    and asyncpg still rolls back a transaction left open before calling this.
    """


@dataclass
class Gateway:
    """One gateway process: consumer and scheduler (``consume``) and the HTTP API (``http``)."""

    settings: Settings
    consume: bool = True
    http: bool = True
    broker: Broker | None = None  # default: RabbitMQ at settings.amqp_url
    senders: Mapping[str, Sender] | None = None  # default: build_senders(settings)
    extra_routes: Iterable[web.AbstractRouteDef] = ()
    name: str = "gateway"
    # This process's Prometheus registry, served at GET /metrics.
    metrics: Metrics = field(default_factory=Metrics)
    _pool: asyncpg.Pool | None = field(default=None, init=False)
    _intake: Intake | None = field(default=None, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _background: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    port: int | None = field(default=None, init=False)

    async def start(self) -> None:
        """Connect, then start the HTTP API and the consumer. Raises if a backend is unreachable."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings.require("database_url", "api_token")
        self._pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=1,
            max_size=settings.database_pool_size,
            reset=_keep_session,
        )
        store = Store(pool=self._pool)
        if self.broker is None:
            self.broker = await AmqpBroker.connect(
                settings.require("amqp_url").amqp_url or "",
                prefetch=settings.prefetch,
                name=self.name,
                queue_type=settings.amqp_queue_type,
            )
        if self.senders is None:
            self.senders = build_senders(settings)
        if self.http:
            app = create_app(
                settings=settings,
                store=store,
                broker=self.broker,
                senders=self.senders,
                extra_routes=self.extra_routes,
                metrics=self.metrics,
            )
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, settings.http_host, settings.http_port)
            await site.start()
            self.port = self._runner.addresses[0][1]
        if self.consume:
            pipeline = Pipeline(
                settings=settings,
                store=store,
                broker=self.broker,
                senders=self.senders,
                renderer=Renderer(),
                metrics=self.metrics,
            )
            intake = self._intake = Intake(
                broker=self.broker,
                pipeline=pipeline,
                batch_size=settings.batch_size,
                batch_wait_seconds=settings.batch_wait_ms / 1000,
            )
            self.metrics.watch_in_flight(lambda: intake.in_flight)
            # Statistics first: the warm start makes the claim's and the caps' generic plans,
            # which are costed on them (gateway.planner_stats).
            planner_stats = PlannerStats(pool=self._pool)
            await planner_stats.check()
            # A connection for each batch that can run at once, ready before the first job:
            # otherwise the first jobs after a start wait for it.
            await store.warm_up(min(settings.database_pool_size, intake.max_batches))
            await intake.start()
            retention = None
            if settings.retention_days is not None:
                retention = Retention(pool=self._pool, days=settings.retention_days)
            scheduler = Scheduler(
                store=store,
                broker=self.broker,
                interval=settings.scheduler_interval_seconds,
                requeue_after=settings.requeue_after_seconds,
                metrics=self.metrics,
                retention=retention,
            )
            self._background.append(asyncio.create_task(scheduler.run(), name="scheduler"))
            self._background.append(
                asyncio.create_task(planner_stats.run(), name="planner-stats")
            )
        self._background.append(
            asyncio.create_task(watch_loop_lag(self.metrics.loop_lag), name="loop-lag")
        )
        log.info(
            "gateway.started", consume=self.consume, http=self.http, port=self.port, name=self.name
        )

    async def stop(self) -> None:
        """Stop consuming, finish in-flight work within the grace period, close everything."""
        if self._intake is not None:
            await self._intake.stop(grace_seconds=self.settings.shutdown_grace_seconds)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.broker is not None:
            await self.broker.close()
        for sender in (self.senders or {}).values():
            await sender.close()
        if self._pool is not None:
            await self._pool.close()
        log.info("gateway.stopped", name=self.name)

    async def run_until_signalled(self, on_started: Callable[[], None] | None = None) -> None:
        """``start``, call ``on_started``, wait for SIGTERM or SIGINT, then ``stop``."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_started is not None:
            on_started()
        try:
            await stop.wait()
            log.info("gateway.stopping", grace_seconds=self.settings.shutdown_grace_seconds)
        finally:
            await self.stop()
