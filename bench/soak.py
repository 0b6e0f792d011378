"""The soak: a steady load on one gateway process for a long while; its resources must stay flat.

``make soak`` (or ``python -m bench.soak``); not part of ``make test``. Settings, from the
environment:

=======================  =======  ===========================================================
``SOAK_SECONDS``         600      how long the load lasts
``SOAK_RATE``            100      jobs a second: 60 % email, 30 % SMS over AMQP, 10 % SMS over
                                  ``POST /v1/messages``; of all of them 5 % with a ``send_at``
                                  a few seconds ahead (the scheduler) and 2 % invalid (dead
                                  letters)
``SOAK_REPORT_SECONDS``  30       one table row this often
=======================  =======  ===========================================================

It brings up, on loopback, a database and a RabbitMQ virtual host of its own (removed at the end,
also on Ctrl-C), the fake providers of ``bench/fakes.py`` (one process) and one
``gateway serve`` process. Every 5 s it samples the gateway process (RSS, open file descriptors,
TCP connections, with psutil), PostgreSQL (``pg_stat_activity`` rows in the soak's database) and
RabbitMQ (``rabbitmqctl list_connections`` and ``list_channels`` in the soak's virtual host;
the soak's own publisher is not counted). Each row shows the latest sample.

The verdict compares the last third of the samples with the first third: flat when the mean RSS
grew by at most 15 % (or 16 MB, whichever is more: a 60 s run is mostly warm-up) and, for each
count (descriptors, sockets, backends, connections, channels), the last third's median is at
most the first third's maximum plus 10 % (at least 2): pools fill up during warm-up and then
stay put, a leak keeps climbing. Then it stops the load, waits for the backlog to drain, and checks that every job
reached a final status or ``gateway.dead``. Exit status 0 when flat and complete, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import psutil

from bench import infra

PG_ADMIN_URL = os.environ.get("SOAK_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("SOAK_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ACCOUNT_SID = "AC" + "0" * 32
API_TOKEN = "soak-token-" + secrets.token_hex(16)
SAMPLE_SECONDS = 5.0
COUNTS = ("fds", "sockets", "pg", "amqp_conns", "amqp_channels")
FINAL = ("sent", "failed", "suppressed", "expired")


def log(text: str) -> None:
    sys.stderr.write(f"{datetime.now():%H:%M:%S} soak: {text}\n")
    sys.stderr.flush()


@dataclass
class Sample:
    at: float
    rss_mb: float
    fds: int
    sockets: int
    pg: int
    amqp_conns: int
    amqp_channels: int


@dataclass
class Load:
    """What the soak published: job ids by path, and the number of invalid bodies."""

    ids: list[str] = field(default_factory=list)
    invalid: int = 0
    http_errors: int = 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _job(n: int, future: datetime) -> tuple[str, dict[str, Any]]:
    """The n-th job and how it travels: ``amqp`` or ``http``."""
    job_id = f"soak-{n}"
    kind = n % 10
    if kind < 6:
        job: dict[str, Any] = {
            "id": job_id, "channel": "email", "to": {"address": f"soak{n % 997}@example.com"},
            "content": {"subject": "Soak {{ n }}", "text": "Hello {{ n }}",
                        "html": "<p>Hello <b>{{ n }}</b></p>"},
            "data": {"n": n},
        }
    else:
        job = {"id": job_id, "channel": "sms", "to": {"address": f"+447911{n % 997:06d}"},
               "content": {"body": "Soak {{ n }}"}, "data": {"n": n}}
    if n % 20 == 7:
        job["send_at"] = future.isoformat()
    return ("http" if kind == 9 else "amqp"), job


class Soak:
    def __init__(self, seconds: float, rate: float, report_every: float) -> None:
        self.seconds, self.rate, self.report_every = seconds, rate, report_every
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.database = f"gw_soak_{tag}"
        self.vhost = f"gw-soak-{tag.replace('_', '-')}"
        self.children = infra.Children()
        self.samples: list[Sample] = []
        self.load = Load()
        self.workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-soak-{tag}"

    # -- setup and teardown ----------------------------------------------------------------------

    async def setup(self) -> tuple[str, str]:
        from gateway.migrate import migrate

        self.workdir.mkdir(parents=True, exist_ok=True)
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        database_url = infra.with_database(PG_ADMIN_URL, self.database)
        await migrate(database_url)
        await infra.rabbitmqctl_async("add_vhost", self.vhost)
        await infra.rabbitmqctl_async("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        return database_url, infra.with_vhost(AMQP_URL, self.vhost)

    async def teardown(self) -> None:
        await self.children.stop_all()
        try:
            admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            await admin.close()
        except (OSError, asyncpg.PostgresError) as exc:
            log(f"could not drop database {self.database}: {exc}")
        try:
            await infra.rabbitmqctl_async("delete_vhost", self.vhost)
        except (OSError, subprocess.SubprocessError) as exc:  # must not hide the verdict
            log(f"could not delete vhost {self.vhost}: {exc}")

    async def start_processes(self, database_url: str, amqp_url: str) -> tuple[int, int]:
        fakes = await self.children.spawn(
            "fakes",
            [infra.python(), "-m", "bench.fakes", "--max-seconds", str(self.seconds + 900)],
            log_path=self.workdir / "fakes.log", stdout_pipe=True,
        )
        ports = (await infra.read_json_line(fakes, timeout=30))["ports"]
        http_port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update({
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_AMQP_URL": amqp_url,
            "GATEWAY_API_TOKEN": API_TOKEN,
            "GATEWAY_HTTP_HOST": "127.0.0.1",
            "GATEWAY_HTTP_PORT": str(http_port),
            "GATEWAY_SMTP_HOST": "127.0.0.1",
            "GATEWAY_SMTP_PORT": str(ports["smtp"]),
            "GATEWAY_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "GATEWAY_TWILIO_AUTH_TOKEN": "soak-auth-token",
            "GATEWAY_TWILIO_BASE_URL": f"http://127.0.0.1:{ports['sms']}",
            "GATEWAY_SMS_FROM": "+14155550199",
            "GATEWAY_SMS_RATE_PER_SECOND": "10000",
            "GATEWAY_SCHEDULER_INTERVAL_SECONDS": "0.5",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "warning",
        })
        gateway = await self.children.spawn(
            "gateway", [infra.python(), "-m", "gateway", "serve"], env=env,
            log_path=self.workdir / "gateway.log",
        )
        await self._wait_ready(http_port, gateway)
        return gateway.pid, http_port

    async def _wait_ready(self, port: int, gateway: infra.Child) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if gateway.process.returncode is not None:
                    raise RuntimeError(f"the gateway exited:\n{gateway.tail()}")
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the gateway never became ready:\n{gateway.tail()}")

    # -- load --------------------------------------------------------------------------------------

    async def publish(self, amqp_url: str, http_port: int, until: float) -> None:
        """``rate`` jobs a second, in ticks of 100 ms, until ``until`` (event loop time)."""
        loop = asyncio.get_running_loop()
        connection = await aio_pika.connect_robust(amqp_url, client_properties={
            "connection_name": "soak-publisher"})
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        # Two connections at most to the gateway's API, so its socket count shows its own.
        connector = aiohttp.TCPConnector(limit=2)
        async with connection, aiohttp.ClientSession(headers=headers, connector=connector) as http:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("gateway.jobs")
            numbers = itertools.count()
            started = loop.time()
            while (now := loop.time()) < until:
                # As many as the rate owes since the start: a slow tick is made up for.
                due = int(self.rate * (now - started)) - len(self.load.ids) - self.load.invalid
                future = datetime.now(UTC) + timedelta(seconds=3)
                await asyncio.gather(*(self._one(next(numbers), future, exchange, http, http_port)
                                       for _ in range(max(0, due))))
                await asyncio.sleep(0.1)

    async def _one(self, n: int, future: datetime, exchange: Any, http: aiohttp.ClientSession,
                   http_port: int) -> None:
        if n % 50 == 13:
            self.load.invalid += 1
            body = b'{"id": "soak-invalid-%d", "channel": ' % n
            await exchange.publish(aio_pika.Message(body, delivery_mode=2),
                                   routing_key="send.promotional")
            return
        path, job = _job(n, future)
        self.load.ids.append(job["id"])
        if path == "http":
            async with http.post(f"http://127.0.0.1:{http_port}/v1/messages", json=job) as answer:
                if answer.status != 202:
                    self.load.http_errors += 1
            return
        await exchange.publish(aio_pika.Message(orjson.dumps(job), delivery_mode=2),
                               routing_key="send.transactional" if n % 3 else "send.promotional")

    # -- sampling ----------------------------------------------------------------------------------

    async def sample(self, pid: int, admin: asyncpg.Connection, started: float) -> Sample:
        at = time.monotonic() - started
        process = psutil.Process(pid)
        with process.oneshot():
            rss = process.memory_info().rss / 1024 / 1024
            fds = process.num_fds()
            sockets = len(process.net_connections(kind="inet"))
        pg = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.database
        )
        conns, channels = await self._rabbit_counts()
        return Sample(at, rss, fds, sockets, pg, conns, channels)

    async def _rabbit_counts(self) -> tuple[int, int]:
        """The gateway's connections and channels in the soak's vhost (rabbitmqctl lists every
        vhost's: filtered here), the publisher's left out."""
        connections = await infra.rabbitmqctl_async(
            "list_connections", "-q", "--no-table-headers", "pid", "vhost", "client_properties"
        )
        channels = await infra.rabbitmqctl_async(
            "list_channels", "-q", "--no-table-headers", "vhost", "connection"
        )
        ours = [line.split("\t") for line in connections.splitlines()
                if line.split("\t")[1:2] == [self.vhost]]
        publisher = {fields[0] for fields in ours if '"soak-publisher"' in fields[2]}
        theirs = [line.split("\t") for line in channels.splitlines()
                  if line.split("\t")[:1] == [self.vhost]]
        return (len(ours) - len(publisher),
                sum(1 for fields in theirs if fields[1] not in publisher))

    async def monitor(self, pid: int) -> None:
        """A sample every SAMPLE_SECONDS for the soak's duration; a row every report_every."""
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        ticks = max(1, int(self.seconds // SAMPLE_SECONDS))
        every = max(1, round(self.report_every / SAMPLE_SECONDS))
        started = time.monotonic()
        print(_header(), flush=True)
        try:
            for tick in range(1, ticks + 1):
                # On a fixed grid: the rabbitmqctl calls (~1 s) must not stretch the period.
                await asyncio.sleep(max(0.0, started + tick * SAMPLE_SECONDS - time.monotonic()))
                sample = await self.sample(pid, admin, started)
                self.samples.append(sample)
                if tick % every == 0 or tick == ticks:
                    print(_row(sample, len(self.load.ids)), flush=True)
        finally:
            await admin.close()

    # -- the run -----------------------------------------------------------------------------------

    async def run(self) -> int:
        database_url, amqp_url = await self.setup()
        pid, http_port = await self.start_processes(database_url, amqp_url)
        log(f"gateway pid {pid}; {self.rate:g} jobs/s for {self.seconds:g} s; logs in {self.workdir}")
        until = asyncio.get_running_loop().time() + self.seconds
        await asyncio.gather(self.publish(amqp_url, http_port, until), self.monitor(pid))
        verdict, flat = judge(self.samples)
        print(verdict, flush=True)
        complete = await self.drained(database_url)
        return 0 if flat and complete else 1

    async def drained(self, database_url: str) -> bool:
        """Wait (up to 60 s) for every published job to reach a final status; say how it went."""
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        try:
            for _ in range(600):
                rows = await pool.fetch("SELECT status, count(*) FROM messages GROUP BY status")
                counts = {r["status"]: r["count"] for r in rows}
                final = sum(counts.get(s, 0) for s in FINAL)
                if final >= len(self.load.ids):
                    break
                await asyncio.sleep(0.1)
        finally:
            await pool.close()
        missing = len(self.load.ids) - final
        print(f"jobs: published {len(self.load.ids)} valid + {self.load.invalid} invalid;"
              f" final {final} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))});"
              f" not final {missing}; HTTP refusals {self.load.http_errors}", flush=True)
        return missing == 0 and self.load.http_errors == 0


def _header() -> str:
    return (f"{'elapsed':>8} {'jobs':>8} {'rss MB':>8} {'fds':>5} {'sockets':>7}"
            f" {'pg conns':>8} {'amqp conns':>10} {'amqp chans':>10}")


def _row(s: Sample, jobs: int) -> str:
    return (f"{s.at:>7.0f}s {jobs:>8} {s.rss_mb:>8.1f} {s.fds:>5} {s.sockets:>7}"
            f" {s.pg:>8} {s.amqp_conns:>10} {s.amqp_channels:>10}")


def judge(samples: list[Sample]) -> tuple[str, bool]:
    """Compare the last third of the samples with the first third; (the verdict, flat?)."""
    if len(samples) < 3:
        return "verdict: too few samples to judge (run longer)", False
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    lines, flat = [], True
    rss_first = statistics.mean(s.rss_mb for s in first)
    rss_last = statistics.mean(s.rss_mb for s in last)
    allowed = max(rss_first * 0.15, 16.0)
    ok = rss_last - rss_first <= allowed
    flat &= ok
    lines.append(f"  rss MB: first third {rss_first:.1f}, last third {rss_last:.1f}"
                 f" ({rss_last - rss_first:+.1f}, allowed +{allowed:.1f}) {'ok' if ok else 'GROWING'}")
    for name in COUNTS:
        # Pools fill up to their bound during warm-up; a leak keeps climbing, so the last third's
        # median ends up above everything the first third saw.
        before = max(getattr(s, name) for s in first)
        after = statistics.median(getattr(s, name) for s in last)
        allowed = before + max(2, before // 10)
        ok = after <= allowed
        flat &= ok
        lines.append(f"  {name}: first third max {before}, last third median {after:g}"
                     f" (allowed {allowed}) {'ok' if ok else 'GROWING'}")
    head = "verdict: FLAT" if flat else "verdict: NOT FLAT"
    if samples[-1].at < 300:
        lines.append("  (a short run: its first third is mostly warm-up, when pools fill and the"
                     " allocator grows; judge a leak on the default 10 minutes)")
    return "\n".join([f"{head} (last third vs first third of {len(samples)} samples)", *lines]), flat


async def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    rate = float(os.environ.get("SOAK_RATE", "100"))
    report_every = float(os.environ.get("SOAK_REPORT_SECONDS", "30"))
    soak = Soak(seconds, rate, report_every)
    try:
        return await soak.run()
    finally:
        await soak.teardown()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
