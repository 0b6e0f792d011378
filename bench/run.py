"""The gateway benchmark: ``make bench`` (or ``python -m bench``). See bench/README.md.

Brings up, on loopback: a fresh PostgreSQL database and RabbitMQ vhost, fake providers (one
process), N gateway worker processes (``python -m gateway serve --consumer-only``), and for the
raw ceiling a bare aio-pika consumer process. Seeds users, endpoints, opt-outs and the policy,
publishes jobs with pipelined publisher confirms, measures, checks correctness, prints one
summary table, writes ``bench/results/latest.json``, and removes everything it made, also on
failure and Ctrl-C (children also die with it: PR_SET_PDEATHSIG).

Phases (``--mode``):

- ``throughput``: the raw ceiling (bare consumer) then the gateway end to end, same N, same
  prefetch; ratio = end-to-end rate / raw rate.
- ``latency``: a fixed offered rate (default 80 % of the measured maximum: this run's, else the
  last ``latest.json``'s, else a short probe) for ``--duration`` seconds; latency percentiles.
  Then (unless ``--no-raw-floor``) the bare consumer at the same rate: the latency, CPU and
  context switches of the broker and the publisher alone, the floor the gateway adds to.
- ``inflight``: the SMS fake answers after 2 s, prefetch high, so 10,000 jobs pile up in flight
  in each gateway process; peak RSS.
- ``curve``: the latency phase at several fractions of the maximum (``--curve``), shorter
  (``--curve-duration``): the highest of them whose p99 is within 50 ms.
- ``all`` (default): throughput, inflight, latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import psutil

from bench import checks, diagnostics, infra, measure, monitor, seed, stats
from bench.common import AMQP_URL, P99_TARGET_MS, PG_ADMIN_URL, log
from bench.publisher import Publisher, PublishResult

JOB_QUEUES = ("gateway.send.transactional", "gateway.send.promotional")
RAW_EXCHANGE = "bench.raw"
RAW_QUEUES = {"bench.raw.transactional": "send.transactional",
              "bench.raw.promotional": "send.promotional"}
ACCOUNT_SID = "AC" + "0" * 32
RUN_TABLES = "messages, message_events, deliveries, daily_counters, campaign_counters"


class BenchFailed(Exception):
    pass


@dataclass
class Bench:
    args: argparse.Namespace
    run_id: str = field(default_factory=lambda: f"{os.getpid()}_{secrets.token_hex(3)}")
    children: infra.Children = field(default_factory=infra.Children)
    results: dict[str, Any] = field(default_factory=dict)
    tmp: Path | None = None
    admin: asyncpg.Connection | None = None
    db_created: bool = False
    vhost_created: bool = False
    fakes: infra.Child | None = None
    ports: dict[str, int] = field(default_factory=dict)
    amqp: aio_pika.abc.AbstractConnection | None = None
    amqp_channel: aio_pika.abc.AbstractChannel | None = None
    http: aiohttp.ClientSession | None = None
    population: seed.Population | None = None
    own_xacts: int = 0
    pg_proxy: Any = None

    @property
    def db_name(self) -> str:
        return f"{infra.PREFIX_DB}{self.run_id}"

    @property
    def vhost(self) -> str:
        return f"{infra.PREFIX_VHOST}{self.run_id.replace('_', '-')}"

    @property
    def db_url(self) -> str:
        return infra.with_database(PG_ADMIN_URL, self.db_name)

    @property
    def amqp_url(self) -> str:
        return infra.with_vhost(AMQP_URL, self.vhost)

    # --- setup and teardown --------------------------------------------------------------------

    async def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"gw-bench-{os.getpid()}-"))
        try:
            self.admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchFailed(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}") from None
        await infra.drop_stale(self.admin, log)
        await self.admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        try:
            await infra.rabbitmqctl_async("add_vhost", self.vhost)
            self.vhost_created = True
            await infra.rabbitmqctl_async("set_permissions", "-p", self.vhost, "guest", ".*", ".*",
                                          ".*")
        except Exception as exc:
            raise BenchFailed(f"cannot create the RabbitMQ vhost with rabbitmqctl: {exc}") from None
        log(f"database {self.db_name}, vhost {self.vhost}")
        migrate = await self.children.spawn(
            "migrate", [infra.python(), "-m", "gateway", "migrate"],
            env=self._env(), log_path=self.tmp / "migrate.log",
        )
        if await asyncio.wait_for(migrate.process.wait(), timeout=60) != 0:
            raise BenchFailed(f"gateway migrate failed:\n{migrate.tail()}")
        await self.children.stop(migrate)
        now = datetime.now(timezone.utc)
        self.population = seed.build_population(
            users=self.args.users, daily_cap=self.args.daily_cap, seed=self.args.seed, now=now
        )
        conn = await asyncpg.connect(self.db_url)
        try:
            seeded = await seed.seed_database(conn, self.population)
        finally:
            await conn.close()
        self.results["population"] = {**self.population.describe(),
                                      "seed_seconds": seeded["seconds"],
                                      "endpoints": seeded["endpoints"]}
        log(f"seeded {self.args.users} users, {seeded['endpoints']} endpoints, "
            f"{seeded['opt_outs']} opt-outs in {seeded['seconds']} s; quiet hours "
            f"{self.population.quiet_hours} (quiet zones {self.population.quiet_zones})")
        self._write_apns_key()
        if self.args.pg_proxy:
            from bench.pgproxy import PgProxy

            host, port = infra.host_port(PG_ADMIN_URL)
            self.pg_proxy = PgProxy(host, port)
            await self.pg_proxy.start()
            log(f"--pg-proxy: workers reach PostgreSQL through a counting proxy on port "
                f"{self.pg_proxy.port} (timings through it are not headline figures)")
        self.fakes = await self.children.spawn(
            "fakes",
            [infra.python(), "-m", "bench.fakes", "--max-seconds", str(self.args.max_seconds + 60),
             "--sms-delay-ms", self.args.sms_delay_ms],
            log_path=self.tmp / "fakes.log", stdout_pipe=True,
        )
        ready = await infra.read_json_line(self.fakes, timeout=20)
        self.ports = ready["ports"]
        self.http = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{self.ports['sms']}")
        # Not robust: a robust channel caches queue declarations, and the passive declarations
        # below must ask the broker every time (consumer and message counts).
        self.amqp = await aio_pika.connect(
            self.amqp_url, client_properties={"connection_name": "bench-control"}
        )
        self.amqp_channel = await self.amqp.channel()
        from gateway.amqp import declare_topology  # the gateway's own topology, kept in sync

        await declare_topology(self.amqp_channel)
        if self.args.bind_events:
            # Someone listens to every event (a capped queue stands in for a consumer that
            # keeps up): events are routed instead of returned to the gateway as unroutable.
            events = await self.amqp_channel.declare_queue(
                "bench.events", durable=False, arguments={"x-max-length": 10_000}
            )
            await events.bind("gateway.events", routing_key="#")
        raw = await self.amqp_channel.declare_exchange(RAW_EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                                       durable=True)
        for name, key in RAW_QUEUES.items():
            queue = await self.amqp_channel.declare_queue(name, durable=True)
            await queue.bind(raw, routing_key=key)

    def _write_apns_key(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        assert self.tmp is not None
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        (self.tmp / "apns.p8").write_bytes(pem)

    async def teardown(self) -> None:
        await self.children.stop_all(grace=10)
        if self.http is not None:
            await self.http.close()
        if self.pg_proxy is not None:
            await self.pg_proxy.stop()
        if self.amqp is not None:
            try:
                await asyncio.wait_for(self.amqp.close(), timeout=5)
            except Exception:
                pass
        if self.args.keep:
            log(f"--keep: leaving database {self.db_name}, vhost {self.vhost}, {self.tmp}")
            return
        if self.admin is not None:
            if self.db_created:
                try:
                    await self.admin.execute(
                        f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'
                    )
                except Exception as exc:
                    log(f"could not drop database {self.db_name}: {exc}")
            await self.admin.close()
        if self.vhost_created:
            try:
                await infra.rabbitmqctl_async("delete_vhost", self.vhost)
            except Exception as exc:
                log(f"could not delete vhost {self.vhost}: {exc}")
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        log("cleaned up: processes stopped, database dropped, vhost deleted")

    # --- gateway workers -----------------------------------------------------------------------

    def _env(self, **settings: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        db_url = self.db_url
        if self.pg_proxy is not None and self.pg_proxy.port:
            db_url = infra.with_database(
                f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/x", self.db_name
            ) + "?sslmode=disable"
        values: dict[str, Any] = {
            "DATABASE_URL": db_url,
            "AMQP_URL": self.amqp_url,
            "API_TOKEN": "bench-token-" + "x" * 20,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": self.args.log_level,
        }
        if self.ports:
            assert self.tmp is not None
            values.update({
                "HTTP_HOST": "127.0.0.1",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": self.ports["smtp"],
                "SMTP_POOL_SIZE": self.args.smtp_pool_size,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": "bench-auth-token",
                "TWILIO_BASE_URL": f"http://127.0.0.1:{self.ports['sms']}",
                "SMS_FROM": "+14155550100",
                "SMS_RATE_PER_SECOND": 100000,
                "SMS_MAX_CONCURRENCY": self.args.sms_concurrency,
                "APNS_BASE_URL": f"http://127.0.0.1:{self.ports['apns']}",
                "APNS_KEY_FILE": str(self.tmp / "apns.p8"),
                "APNS_KEY_ID": "BENCHKEY01",
                "APNS_TEAM_ID": "BENCHTEAM1",
                "APNS_TOPIC": "com.example.bench",
                "PUSH_RATE_PER_SECOND": 100000,
                "PUSH_BURST": 1000,
                "PREFETCH": self.args.prefetch,
                "BATCH_SIZE": self.args.batch_size,
                "BATCH_WAIT_MS": self.args.batch_wait_ms,
            })
        values.update(settings)
        env.update({f"GATEWAY_{k}": str(v) for k, v in values.items()})
        return env

    async def start_workers(self, traced: bool = False, **settings: Any) -> list[infra.Child]:
        assert self.tmp is not None
        workers = []
        expected = self.args.workers
        if self.args.serve_workers and self.args.workers > 1:
            # The gateway's own flag: one `serve --workers N` process and its N-1 children.
            workers.append(await self.children.spawn(
                "worker-0",
                [infra.python(), "-m", "gateway", "serve", "--consumer-only", "--workers",
                 str(self.args.workers)],
                env=self._env(**settings), log_path=self.tmp / "worker-0.log",
            ))
        for index in range(0 if workers else self.args.workers):
            env = self._env(**settings)
            argv = [infra.python(), "-m", "gateway", "serve", "--consumer-only"]
            if self.args.gc_threshold or self.args.gc_freeze:
                argv = [infra.python(), "-m", "bench.traced_worker"]
                env["BENCH_GC_THRESHOLD"] = self.args.gc_threshold or ""
                env["BENCH_GC_FREEZE"] = "1" if self.args.gc_freeze else "0"
            if traced and index == 0:
                argv = [infra.python(), "-m", "bench.traced_worker"]
                env["BENCH_TRACEMALLOC_OUT"] = str(self.tmp / "tracemalloc.txt")
                env["BENCH_TRACEMALLOC"] = "1" if self.args.tracemalloc else "0"
            workers.append(await self.children.spawn(
                f"worker-{index}", argv, env=env, log_path=self.tmp / f"worker-{index}.log",
            ))
        deadline = time.monotonic() + 30
        while True:
            for worker in workers:
                if worker.process.returncode is not None:
                    raise BenchFailed(f"{worker.name} exited with {worker.process.returncode}:\n"
                                      f"{worker.tail()}")
            counts = [q.declaration_result.consumer_count for q in await self._queues(JOB_QUEUES)]
            if all(c >= expected for c in counts):
                return workers
            if time.monotonic() > deadline:
                raise BenchFailed(f"workers did not start consuming within 30 s:\n"
                                  f"{workers[0].tail()}")
            await asyncio.sleep(0.1)

    def _worker_pids(self, workers: list[infra.Child]) -> dict[str, int]:
        """Every gateway process: ours, and with --serve-workers the children it started."""
        pids = {w.name: w.pid for w in workers}
        if self.args.serve_workers:
            for worker in workers:
                try:
                    kids = psutil.Process(worker.pid).children()
                except psutil.NoSuchProcess:
                    continue
                for index, kid in enumerate(kids, start=1):
                    pids[f"{worker.name}.{index}"] = kid.pid
        return pids

    async def stop_workers(self, workers: list[infra.Child]) -> list[int | None]:
        codes = await asyncio.gather(*(self.children.stop(w, grace=25) for w in workers))
        return list(codes)

    async def _queues(self, names: tuple[str, ...] | list[str]) -> list[aio_pika.abc.AbstractQueue]:
        assert self.amqp_channel is not None
        return [await self.amqp_channel.declare_queue(n, passive=True) for n in names]

    async def _purge(self, names: tuple[str, ...] | list[str]) -> None:
        for queue in await self._queues(names):
            await queue.purge()

    # --- fakes ---------------------------------------------------------------------------------

    async def fakes_control(self, **body: Any) -> None:
        assert self.http is not None
        async with self.http.post("/_bench/control", data=orjson.dumps(body)) as response:
            response.raise_for_status()

    async def fakes_count(self) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get("/_bench/count") as response:
            return orjson.loads(await response.read())

    async def fakes_records(self) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.get("/_bench/records") as response:
            return orjson.loads(await response.read())

    # --- database helpers ----------------------------------------------------------------------

    async def reset_run_state(self) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute(f"TRUNCATE {RUN_TABLES}")
        finally:
            await conn.close()
        await self._purge([*JOB_QUEUES, "gateway.dead", *RAW_QUEUES])

    async def final_count(self, conn: asyncpg.Connection) -> tuple[int, int]:
        self.own_xacts += 1
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status = ANY($1::text[])) AS final"
            " FROM messages", list(stats.FINAL),
        )
        assert row is not None
        return int(row["total"]), int(row["final"])

    # --- phases --------------------------------------------------------------------------------

    def _workload(self, count: int, prefix: str, transactional_share: float | None = None
                  ) -> seed.Workload:
        assert self.population is not None
        return seed.build_workload(
            self.population, count=count, prefix=f"{prefix}{self.run_id[-6:]}",
            seed=self.args.seed,
            transactional_share=self.args.transactional_share if transactional_share is None
            else transactional_share,
            expires_at=seed.expires_for_run(datetime.now(timezone.utc)),
            templates=not self.args.inline,
        )

    async def _quiet_machine(self, name: str) -> dict[str, Any]:
        """Measure the machine's load from others before a phase; with ``--wait-quiet S`` wait
        up to S seconds for it to drop under 15 %. Warn when it is busy."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            background = await asyncio.to_thread(monitor.background_load, 1.0, {os.getpid()})
            if background["machine_busy_percent"] <= 15 or time.monotonic() >= deadline:
                break
        if background["machine_busy_percent"] > 15:
            log(f"WARNING: the machine is {background['machine_busy_percent']}% busy before "
                f"{name} starts (not us): {background['busy_processes']}; figures will suffer")
        return background

    async def phase_raw(self, count: int, *, rate: float | None = None) -> dict[str, Any]:
        """Publish ``count`` same-size messages; a bare consumer acks them, no work.

        With ``rate``, the publisher is paced as in the latency phase and the consumer reports
        publish → consume latency: the floor of this box at that offered rate (``--raw-floor``).
        """
        assert self.tmp is not None
        name = "raw floor" if rate else "raw ceiling"
        log(f"{name}: {count} messages{f' paced at {rate:.0f}/s' if rate else ''}, prefetch "
            f"{self.args.prefetch}, bare aio-pika consumer")
        background = await self._quiet_machine("raw")
        await self._purge(list(RAW_QUEUES))
        workload = self._workload(count, "raw")
        consumer = await self.children.spawn(
            "raw-consumer",
            [infra.python(), "-m", "bench.raw", "--url", self.amqp_url,
             *[arg for q in RAW_QUEUES for arg in ("--queue", q)],
             "--prefetch", str(self.args.prefetch), "--count", str(count),
             "--timeout", str(max(60, count / 500) + (count / rate if rate else 0)),
             *(["--latency"] if rate else [])],
            log_path=self.tmp / "raw.log", stdout_pipe=True,
        )
        await infra.read_json_line(consumer, timeout=20)
        cpu = monitor.CpuAccount({
            "raw_consumer": lambda: [psutil.Process(consumer.pid)],
            "bench_publisher": monitor.self_process,
            "rabbitmq": monitor.rabbitmq_processes,
        })
        cpu.start()
        items = [(j.routing_key, j.body) for j in workload.jobs]
        async with Publisher(self.amqp_url, exchange=RAW_EXCHANGE) as publisher:
            if rate:
                published = await publisher.paced(items, rate, tick=self.args.pace_tick_ms / 1000)
            else:
                published = await publisher.burst(items)
        result = await infra.read_json_line(consumer, timeout=max(60, count / 500) + 10)
        cpu_result = cpu.stop()
        await self.children.stop(consumer)
        seconds = result["last_ack"] - published.first
        body_sizes = [len(orjson.dumps(j.body)) for j in workload.jobs[:1000]]
        out = {
            "messages": count,
            "acked": result["acked"],
            "timed_out": bool(result.get("timed_out")),
            "seconds": round(seconds, 3),
            "rate": round(result["acked"] / seconds, 1),
            "publish": published.to_json(),
            "mean_body_bytes": round(sum(body_sizes) / len(body_sizes)),
            "cpu": cpu_result,
            "background_before_phase": background,
        }
        if rate:
            out["offered_rate"] = round(rate, 1)
            out["latency"] = result.get("latency", {})
            lat = out["latency"]
            log(f"raw floor: {out['rate']} msg/s, publish -> consume latency p50 "
                f"{lat.get('p50_ms')} p95 {lat.get('p95_ms')} p99 {lat.get('p99_ms')} max "
                f"{lat.get('max_ms')} ms")
        else:
            log(f"raw ceiling: {out['rate']} msg/s ({out['acked']} acked in {out['seconds']} s)")
        return out

    async def phase_gateway(
        self, name: str, count: int, *, rate: float | None = None,
        transactional_share: float | None = None, worker_settings: dict[str, Any] | None = None,
        sms_delay_ms: str | None = None, inflight_target: int | None = None,
        profile: bool = False,
    ) -> dict[str, Any]:
        """Publish ``count`` jobs (burst, or paced at ``rate``) to the gateway; measure; check."""
        assert self.admin is not None and self.tmp is not None
        workload = self._workload(count, name[:3], transactional_share)
        await self.reset_run_state()
        lo, _, hi = (sms_delay_ms or self.args.sms_delay_ms).partition("-")
        await self.fakes_control(reset=True, sms_delay_ms=[float(lo), float(hi or lo)])
        background = await self._quiet_machine(name)
        traced = bool(inflight_target and (self.args.tracemalloc or self.args.heap_report))
        workers = await self.start_workers(traced=traced, **(worker_settings or {}))
        pids = self._worker_pids(workers)
        fakes_pid = self.fakes.pid if self.fakes else os.getpid()
        cpu = monitor.CpuAccount({
            "gateway_workers": lambda: [psutil.Process(p) for p in pids.values()
                                        if psutil.pid_exists(p)],
            "fake_providers": lambda: [psutil.Process(fakes_pid)],
            "bench_publisher": monitor.self_process,
            "postgres": lambda: monitor.postgres_processes(self.db_name),
            "rabbitmq": monitor.rabbitmq_processes,
        })
        rss = monitor.RssSampler(pids, interval=0.1)
        await asyncio.sleep(0.5)  # let the workers' start-up statements flush their statistics
        db_before = await stats.database_counters(self.admin, self.db_name)
        self.own_xacts = 0
        if self.pg_proxy is not None:
            self.pg_proxy.reset()
        spy = await diagnostics.start_profiler(
            workers[0], children=self.children, tmp=self.tmp, args=self.args
        ) if profile else None
        cpu.start()
        rss.start()
        waits = asyncio.create_task(measure.sample_db_waits(self.db_name))
        mode = f"paced at {rate:.0f}/s" if rate else "burst"
        log(f"{name}: {count} jobs ({mode}), {len(workers)} worker(s), prefetch "
            f"{(worker_settings or {}).get('PREFETCH', self.args.prefetch)}, batch "
            f"{self.args.batch_size}/{self.args.batch_wait_ms} ms, log level {self.args.log_level}")
        items = [(j.routing_key, j.body) for j in workload.jobs]
        poll = await asyncpg.connect(self.db_url, server_settings={"application_name": "bench"})
        inflight: dict[str, Any] = {}
        try:
            async with Publisher(self.amqp_url, exchange="gateway.jobs") as publisher:
                live = PublishResult()
                publishing = asyncio.create_task(
                    publisher.paced(items, rate, live, tick=self.args.pace_tick_ms / 1000)
                    if rate else publisher.burst(items, live)
                )
                if inflight_target:
                    inflight = await self._watch_inflight(publishing, live, poll,
                                                          inflight_target, rss,
                                                          workers[0] if traced else None)
                published = await publishing
            log(f"{name}: published {published.count} in {published.seconds:.2f} s "
                f"({published.count / published.seconds:.0f}/s, nacked {published.nacked})")
            done = await self._wait_done(poll, workload, published, name)
        finally:
            await poll.close()
            waits.cancel()
            db_waits = await waits
            if sys.exc_info()[0] is not None:  # failing: stop the samplers, teardown does the rest
                await rss.stop()
                cpu.stop()
        proxy = self.pg_proxy.snapshot() if self.pg_proxy is not None else None
        if spy is not None:
            await diagnostics.stop_profiler(spy, children=self.children, args=self.args,
                                            results=self.results)
        cpu_result = cpu.stop()
        await rss.stop()
        codes = await self.stop_workers(workers)
        await asyncio.sleep(1.0)  # backends exit and flush their statistics
        db_after = await stats.database_counters(self.admin, self.db_name)
        records = await self.fakes_records()
        out = measure.summary(name, workload, published, done, records, rss, cpu_result,
                              db_before, db_after, codes, rate,
                              workers=self.args.workers, own_xacts=self.own_xacts)
        out["background_before_phase"] = background
        out["database"]["backend_states_sampled"] = db_waits
        if "latency_windows_1s" in out:  # a paced phase: what each second's tail sat beside
            out["latency_by_load"] = stats.latency_by_load(
                out["latency_windows_1s"], cpu_result["machine_busy_timeline"],
                db_waits["maintenance"], out["first_publish_at"], limit_ms=P99_TARGET_MS,
            )
        if inflight:
            out["inflight"] = inflight
        if proxy is not None:
            proxy["round_trips_per_job"] = round(proxy["round_trips"] / count, 4)
            out["pg_proxy"] = proxy
            log(f"{name}: pg proxy: {proxy['round_trips']} round trips "
                f"({proxy['round_trips_per_job']}/job); executions "
                f"{proxy['executions_by_statement']}; simple {proxy['simple_queries']}")
        assert self.population is not None and self.amqp_channel is not None
        out["correctness"] = await checks.correctness(
            workload, records, codes, workers, db_url=self.db_url,
            amqp_channel=self.amqp_channel, daily_cap=self.population.daily_cap,
        )
        return out

    async def _watch_inflight(
        self, publishing: asyncio.Task[PublishResult], live: PublishResult,
        poll: asyncpg.Connection, target: int, rss: monitor.RssSampler,
        traced: infra.Child | None = None,
    ) -> dict[str, Any]:
        """Sample jobs in flight (published - ready - final) with RSS; release the slow fake
        once the pile-up has held for a few seconds."""
        peak, at_peak_rss, samples = 0, {}, []
        started = time.monotonic()
        held_since: float | None = None
        while time.monotonic() - started < 60:
            ready = sum(q.declaration_result.message_count or 0
                        for q in await self._queues(JOB_QUEUES))
            _, final = await self.final_count(poll)
            fakes = await self.fakes_count()
            # Confirmed by the broker, minus still in the queues, minus finished.
            in_flight = max(0, live.confirmed - ready - final)
            samples.append((round(time.monotonic() - started, 2), in_flight,
                            rss.current_mb(), fakes["sms_in_flight"]))
            if in_flight > peak:
                peak, at_peak_rss = in_flight, rss.current_mb()
            if in_flight >= 0.98 * target and held_since is None:
                held_since = time.monotonic()
            if held_since is not None and time.monotonic() - held_since > 3:
                # Held at the target: wait until RSS stops growing (< 1 MB in 2 s), at most 20 s.
                recent = [s[2] for s in samples if s[0] >= samples[-1][0] - 2]
                grew = max((recent[-1].get(k, 0) - recent[0].get(k, 0)) for k in recent[-1])
                if grew < 1 or time.monotonic() - held_since > 20:
                    break
            if publishing.done() and time.monotonic() - started > 30:
                break
            await asyncio.sleep(0.25)
        held_rss = [s[2] for s in samples if s[1] >= 0.98 * target]
        if traced is not None:
            assert self.tmp is not None
            await diagnostics.dump_heap(traced, tmp=self.tmp)
        await self.fakes_control(sms_delay_ms=[0, 0], release=True)  # let the pile drain
        log(f"inflight: peak {peak} jobs in flight, RSS then {at_peak_rss} MB, "
            f"peak RSS {rss.peak_mb()} MB; releasing the slow SMS fake")
        peak_held = {name: max(s.get(name, 0) for s in held_rss) for name in at_peak_rss} \
            if held_rss else {}
        return {"target": target, "peak_in_flight": peak, "rss_at_peak_in_flight_mb": at_peak_rss,
                "peak_rss_while_at_target_mb": peak_held,
                "peak_rss_until_release_mb": rss.peak_mb(),
                "held_seconds": round(len(held_rss) * 0.25, 2), "samples": samples}

    async def _wait_done(
        self, poll: asyncpg.Connection, workload: seed.Workload, published: PublishResult,
        name: str,
    ) -> dict[str, Any]:
        """Until the fakes accepted every expected send and every job is final (bounded)."""
        expected_sent = workload.expected_sent
        deadline = time.monotonic() + max(60.0, len(workload.jobs) / 250)
        last_total, last_change = -1, time.monotonic()
        stalled = False
        while time.monotonic() < deadline:
            counts = await self.fakes_count()
            total = sum(counts[c]["accepted"] + counts[c]["duplicates"]
                        for c in ("sms", "email", "push"))
            if total >= expected_sent:
                break
            if total != last_total:
                last_total, last_change = total, time.monotonic()
            elif time.monotonic() - last_change > 15:
                stalled = True
                break
            await asyncio.sleep(0.1)
        final_deadline = time.monotonic() + 30
        total_rows = final = 0
        while time.monotonic() < min(deadline + 30, final_deadline):
            total_rows, final = await self.final_count(poll)
            if final >= len(workload.jobs):
                break
            await asyncio.sleep(0.25)
        all_final_at = time.time()
        complete = final >= len(workload.jobs)
        if not complete:
            log(f"{name}: NOT COMPLETE: {final}/{len(workload.jobs)} final "
                f"({total_rows} rows){' - stalled' if stalled else ''}")
        return {"complete": complete, "final": final, "rows": total_rows, "stalled": stalled,
                "all_final_at": all_final_at}

    # --- the run -------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.results["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.results["machine"] = machine()
        self.results["config"] = {k: v for k, v in vars(args).items()}
        self.results["earlier_phases"] = self._earlier_phases()
        await self.setup()
        phases: dict[str, Any] = {}
        self.results["phases"] = phases
        modes = {"all": ["throughput", "inflight", "latency"]}.get(args.mode, [args.mode])
        if "throughput" in modes:
            if not args.skip_raw:
                phases["raw"] = await self.phase_raw(args.jobs)
            phases["throughput"] = await self.phase_gateway(
                "throughput", args.jobs, profile=args.profile and args.profile_phase == "throughput"
            )
            if "raw" in phases:
                phases["throughput"]["ratio_to_raw"] = round(
                    phases["throughput"]["rate_jobs_per_s"] / phases["raw"]["rate"], 3
                )
        if "inflight" in modes:
            target = args.inflight
            phases["inflight"] = await self.phase_gateway(
                # 10 % more jobs than the two queues' prefetch: both queues fill up.
                "inflight", int(target * args.workers * 1.1), transactional_share=0.5,
                worker_settings={"PREFETCH": max(args.prefetch, target // 2),
                                 "SMS_MAX_CONCURRENCY": 1000,
                                 # Longer than the fake's hold: no send may time out here.
                                 "PROVIDER_TIMEOUT_SECONDS":
                                     args.inflight_sms_delay_ms / 1000 + 30},
                sms_delay_ms=f"{args.inflight_sms_delay_ms}-{args.inflight_sms_delay_ms}",
                inflight_target=target * args.workers,
                profile=args.profile and args.profile_phase == "inflight",
            )
        if "latency" in modes:
            rate, source = await self._offered_rate(phases)
            phases["latency"] = await self.phase_gateway(
                "latency", int(rate * args.duration), rate=rate,
                profile=args.profile and args.profile_phase == "latency",
            )
            phases["latency"]["rate_source"] = source
            if args.raw_floor:
                phases["raw_floor"] = await self.phase_raw(
                    int(rate * args.raw_floor_duration), rate=rate
                )
        if "curve" in modes:
            phases["curve"] = await self.phase_curve(phases)
        return self.results

    def _earlier_phases(self) -> dict[str, Any]:
        """Phases of earlier runs kept in latest.json (this run may do only some of them); the
        table shows this run only, the JSON keeps both, each with the time of its run."""
        previous = self.args.output
        if not previous.exists():
            return {}
        try:
            old = orjson.loads(previous.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        earlier = dict(old.get("earlier_phases") or {})
        for name, phase in (old.get("phases") or {}).items():
            earlier[name] = {**phase, "run_at": old.get("started_at")}
        return earlier

    async def _offered_rate(self, phases: dict[str, Any]) -> tuple[float, str]:
        if self.args.rate:
            return float(self.args.rate), "--rate"
        measured, source = await self._measured_max(phases)
        rate = self.args.rate_fraction * measured
        log(f"latency: offered rate {rate:.0f}/s = {self.args.rate_fraction:.0%} of "
            f"{measured:.0f}/s"
            f" ({source})")
        return rate, f"{self.args.rate_fraction:.0%} of {measured:.0f}/s from {source}"

    async def _measured_max(self, phases: dict[str, Any]) -> tuple[float, str]:
        """The end-to-end maximum the offered rates are fractions of, and where it came from."""
        if "throughput" in phases:
            measured = phases["throughput"]["rate_jobs_per_s"]
            source = "this run's throughput phase"
        else:
            measured = None
            earlier = self.results.get("earlier_phases", {}).get("throughput")
            if earlier and earlier.get("workers") == self.args.workers:
                measured = earlier["rate_jobs_per_s"]
            source = f"bench/results/latest.json (run of {earlier and earlier.get('run_at')})"
            if measured is None:
                probe = await self.phase_gateway("probe", min(self.args.jobs, 20_000))
                measured = probe["rate_jobs_per_s"]
                source = "a 20,000-job probe"
        return measured, source

    async def phase_curve(self, phases: dict[str, Any]) -> dict[str, Any]:
        """Latency at several fractions of the maximum, ``--curve-duration`` seconds each: up
        to which rate the p99 target holds on this machine."""
        measured, source = await self._measured_max(phases)
        points: list[dict[str, Any]] = []
        correctness: dict[str, Any] = {"ok": True}
        for fraction in self.args.curve:
            rate = fraction * measured
            name = f"c{round(fraction * 100):02d}"
            log(f"curve: {fraction:.0%} of {measured:.0f}/s = {rate:.0f}/s for "
                f"{self.args.curve_duration:.0f} s")
            phase = await self.phase_gateway(name, int(rate * self.args.curve_duration), rate=rate)
            cpu = phase["cpu"]
            points.append({
                "fraction": fraction,
                "offered_rate": round(rate, 1),
                "achieved_rate": phase["rate_jobs_per_s"],
                "latency": phase["latency"],
                "latency_after_5s_warmup": phase.get("latency_after_5s_warmup"),
                "machine_busy_percent": cpu["machine_busy_percent"],
                "gateway_cpu_ms_per_job": phase["gateway_cpu_ms_per_job"],
                "machine_context_switches_per_job": round(
                    cpu["machine_context_switches_per_s"] * cpu["wall_seconds"] / phase["jobs"], 2),
                "xacts_per_job": phase["database"]["xacts_per_job"],
                "latency_by_load": phase.get("latency_by_load"),
            })
            checked = phase.get("correctness") or {}
            correctness[name] = checked
            correctness["ok"] = correctness["ok"] and bool(checked.get("ok"))
        held = [p["offered_rate"] for p in points
                if p["latency"].get("p99_ms", 1e9) <= P99_TARGET_MS]
        return {
            "max_rate": measured,
            "max_rate_source": source,
            "seconds_per_point": self.args.curve_duration,
            "points": points,
            "highest_rate_with_p99_within_50ms": max(held) if held else None,
            "correctness": correctness,
        }


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": "", "rabbitmq": "",
    }


if __name__ == "__main__":
    from bench.cli import main

    raise SystemExit(main())
