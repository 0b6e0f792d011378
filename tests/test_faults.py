"""Faults against the real services: kill -9 mid-burst, a provider outage, providers that never
answer, and poison jobs among good ones.

Covered in tests/test_shutdown.py and not repeated here: RabbitMQ closing every connection
mid-burst (``test_broker_connections_closed_mid_burst_reconnects_and_loses_nothing``),
PostgreSQL unavailable for a while (``test_database_outage_pauses_and_resumes``) and SIGTERM
mid-burst (``test_sigterm_during_a_burst_loses_nothing``).

Each test prints one ``FAULT`` line with its figures (shown with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import pytest

from adapters.breaker import BreakerState, CircuitBreaker
from adapters.errors import TransientSendError
from gateway.app import Gateway
from gateway.broker import JOB_QUEUES
from gateway.settings import Settings
from tests.conftest import Amqp, settings_env
from tests.conftest_logs import record_lines
from tests.fake_slow import SilentServer, SwitchableTwilio
from tests.test_email_flow import email_job, statuses
from tests.test_sms_flow import sms_job, sms_settings

pytestmark = pytest.mark.reliability

FINAL = ("sent", "failed", "suppressed", "expired")


def report(name: str, **figures: Any) -> None:
    print(f"FAULT {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def publish_many(amqp: Amqp, jobs: Sequence[dict[str, Any] | bytes], chunk: int = 250) -> None:
    """Publish with up to ``chunk`` confirms in flight, chunk after chunk."""
    for start in range(0, len(jobs), chunk):
        await asyncio.gather(*(amqp.publish(job) for job in jobs[start : start + chunk]))


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``await check()`` every 0.1 s until it is true; fail naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def final_count(pg_pool: asyncpg.Pool, ids: list[str]) -> int:
    count: int = await pg_pool.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::text[]) AND status = ANY($2::text[])",
        ids, list(FINAL),
    )
    return count


# -- kill -9 ------------------------------------------------------------------------------------


async def _drain(stream: asyncio.StreamReader | None, into: list[bytes]) -> None:
    # A gateway writes a line per message: an unread pipe would fill and stall its event loop.
    assert stream is not None
    while line := await stream.readline():
        into.append(line)


@asynccontextmanager
async def gateway_process(settings: Settings) -> AsyncIterator[asyncio.subprocess.Process]:
    """``gateway serve --consumer-only`` as a child process; its stderr goes to the log check.
    Left running at the end of the block it gets SIGTERM (SIGKILL after 20 s)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--consumer-only",
        env=settings_env(settings), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr: list[bytes] = []
    reader = asyncio.create_task(_drain(process.stderr, stderr))
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()
        await reader
        record_lines("gateway process stderr", stderr)


def phone(n: int) -> str:
    return f"+447911{n:06d}"  # valid UK mobile numbers, one per job


async def test_kill_9_mid_burst_loses_nothing_and_resends_only_what_was_in_flight(
    amqp: Amqp, settings_for: Any, pg_pool: asyncpg.Pool,
) -> None:
    """SIGKILL a gateway in the middle of 5,000 SMS jobs and start another: every job ends
    'sent' once in the database, none is lost, and only jobs that were 'processing' at the kill
    reach the provider twice."""
    total = 5000
    twilio = SwitchableTwilio()
    await twilio.start()
    # A short lease, so the dead process's claims lapse within seconds; not shorter, because a
    # send is cut off at half the lease, and a send cut off after the fake took it would be a
    # second duplicate that the kill did not cause.
    settings = sms_settings(
        settings_for, twilio, prefetch=50, batch_size=25, processing_lease_seconds=4.0
    )
    ids = [f"kill-{n}" for n in range(total)]
    await publish_many(amqp, [sms_job(i, phone(n)) for n, i in enumerate(ids)])
    try:
        async with gateway_process(settings) as first:
            await wait_until(lambda: _arrived(twilio, total // 4), 90, "a quarter of the jobs")
            first.kill()
            await first.wait()
        assert first.returncode == -9
        # Nothing runs now: this is exactly what the dead process held.
        rows = await pg_pool.fetch("SELECT id FROM messages WHERE status = 'processing'")
        in_flight = {r["id"] for r in rows}
        sent_before = len(twilio.received)
        assert sent_before < total, "the kill came after the burst"
        assert len(in_flight) <= settings.prefetch * len(JOB_QUEUES)

        async with gateway_process(settings) as second:
            await wait_until(lambda: _all_final(pg_pool, twilio, ids), 120, "every job final")
            await asyncio.sleep(0.5)  # a late duplicate would show up now
        assert second.returncode == 0
    finally:
        await twilio.stop()

    by_number = Counter(r.form["To"] for r in twilio.received)
    seen = Counter({ids[n]: by_number[phone(n)] for n in range(total) if by_number[phone(n)]})
    duplicates = {i for i, count in seen.items() if count > 1}
    report("kill -9", jobs=total, sent_before_kill=sent_before, processing_at_kill=len(in_flight),
           bound=settings.prefetch * len(JOB_QUEUES), lost=len(set(ids) - set(seen)),
           duplicates=len(duplicates), requests=sum(seen.values()))
    assert set(seen) == set(ids)  # none lost
    assert duplicates <= in_flight, sorted(duplicates - in_flight)[:10]
    assert max(seen.values()) <= 2
    statuses_ = await pg_pool.fetch("SELECT status, count(*) FROM messages GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses_} == {"sent": total}
    sent_events = await pg_pool.fetch(
        "SELECT message_id, count(*) FROM message_events WHERE status = 'sent'"
        " GROUP BY message_id HAVING count(*) <> 1"
    )
    assert sent_events == []  # exactly one final state recorded per job


async def _arrived(twilio: SwitchableTwilio, count: int) -> bool:
    return len(twilio.received) >= count


async def _all_final(pg_pool: asyncpg.Pool, twilio: SwitchableTwilio, ids: list[str]) -> bool:
    if await final_count(pg_pool, ids) < len(ids):
        return False
    return len({r.form["To"] for r in twilio.received}) >= len(ids)


# -- a provider outage --------------------------------------------------------------------------


async def watch_breaker(breaker: CircuitBreaker, windows: list[list[float]]) -> None:
    """Append ``[opened, closed]`` (event loop time, ``closed`` ``inf`` while open) for each
    time the breaker is seen open; sampled every 10 ms."""
    loop = asyncio.get_running_loop()
    while True:
        is_open = breaker.state is BreakerState.open
        if is_open and (not windows or windows[-1][1] != math.inf):
            windows.append([loop.time(), math.inf])
        elif not is_open and windows and windows[-1][1] == math.inf:
            windows[-1][1] = loop.time()
        await asyncio.sleep(0.01)


def refusing_for(breaker: CircuitBreaker) -> float:
    """Seconds since ``breaker`` opened if it refuses calls now (not half-open), else 0."""
    try:
        breaker.check()
    except TransientSendError as exc:
        # Open: retry_after is the time left of reset_after. Half-open with the trial out:
        # retry_after is a whole reset_after, so 0 (that request is the trial).
        return breaker.reset_after - (exc.retry_after or 0.0)
    return 0.0


async def test_provider_503_for_30_seconds_defers_then_delivers_everything(
    amqp: Amqp, settings_for: Any, start_gateway: Any, pg_pool: asyncpg.Pool,
) -> None:
    """Twilio answers 503 for 30 s: every job is deferred, the breaker opens (no request reaches
    Twilio while it is open) and closes again, and every job is then sent once, within
    max_attempts."""
    twilio = SwitchableTwilio()
    await twilio.start()
    twilio.down = True
    settings = sms_settings(
        settings_for, twilio, breaker_failure_threshold=5, breaker_reset_seconds=5,
        max_attempts=20, retry_base_seconds=0.5, retry_max_seconds=5,
    )
    loop = asyncio.get_running_loop()
    windows: list[list[float]] = []
    ids = [f"outage-{n}" for n in range(30)]
    try:
        gateway = await start_gateway(settings)
        breaker = gateway.senders["sms"].breaker
        watcher = asyncio.create_task(watch_breaker(breaker, windows))
        # How long the breaker had been refusing calls when each request arrived: exact, where
        # the 10 ms sampling of the watcher can miss a half-open trial by a few milliseconds.
        open_for: list[float] = []
        twilio.on_request = lambda: open_for.append(refusing_for(breaker))
        await publish_many(amqp, [sms_job(i, phone(n)) for n, i in enumerate(ids)])
        await asyncio.sleep(30)
        twilio.down, recovered = False, loop.time()
        events = await amqp.wait_events(
            lambda ev: all("sent" in statuses(ev, i) for i in ids), timeout=30
        )
        delivered = loop.time()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await twilio.stop()

    reasons = Counter(e["reason"] for e in events if e.get("status") == "deferred")
    during = [r for r in twilio.received if r.at < recovered]
    report("503 for 30 s", jobs=len(ids), requests_during_outage=len(during),
           breaker_opened=len(windows), deferrals=sum(reasons.values()),
           delivered_after_recovery_s=round(delivered - recovered, 1))
    assert "provider twilio paused by circuit breaker" in reasons
    assert any(r.startswith("twilio HTTP 503") for r in reasons)
    for message_id in ids:
        seen = statuses(events, message_id)
        assert seen[0] == "accepted" and seen[-1] == "sent", seen
        assert seen.count("sent") == 1 and "failed" not in seen
        assert 1 <= seen.count("deferred") < settings.max_attempts
    # The breaker opened, and nothing was sent to Twilio while it was open (250 ms of slack for
    # requests admitted just before it opened; a half-open trial counts as not refusing); it is
    # closed again.
    assert windows and windows[0][0] < recovered
    assert len(open_for) == len(twilio.received)
    assert [seconds for seconds in open_for if seconds > 0.25] == []
    assert breaker.state is BreakerState.closed
    # Only the first wave and one trial per half-open period met the outage.
    assert len(during) <= len(ids) + 30 / settings.breaker_reset_seconds + 1
    after = Counter(r.form["To"] for r in twilio.received if r.at >= recovered)
    assert after == Counter(phone(n) for n in range(len(ids)))  # each job sent once afterwards
    attempts = await pg_pool.fetchval("SELECT max(attempts) FROM messages")
    assert attempts <= settings.max_attempts


# -- providers that accept the connection and never answer --------------------------------------


async def test_smtp_server_that_never_greets_times_out_and_the_gateway_stops(
    amqp: Amqp, settings_for: Any
) -> None:
    """An SMTP server that accepts and never greets: each try times out after
    smtp_timeout_seconds, the message is deferred with a timeout reason, and the gateway stops
    at once."""
    silent = SilentServer()
    await silent.start()
    settings = settings_for(
        smtp_host="127.0.0.1", smtp_port=silent.port, smtp_timeout_seconds=0.5,
        retry_base_seconds=0.2, retry_max_seconds=0.5,
    )
    try:
        stop_seconds, events = await _send_then_stop(
            amqp, settings, email_job("never-greeted"), silent
        )
    finally:
        await silent.stop()
    reasons = [e["reason"] for e in events if e.get("status") == "deferred"]
    report("silent SMTP", deferrals=len(reasons), connections=silent.accepted,
           stop_s=round(stop_seconds, 2), reason=reasons[0])
    assert reasons[0].startswith(f"SMTP connection to 127.0.0.1:{silent.port} failed")
    assert "timed out" in reasons[0].lower()
    # Stopped during the third try: it waited for that try's timeout, not the grace period.
    assert stop_seconds < settings.smtp_timeout_seconds + 2 < settings.shutdown_grace_seconds


async def test_a_send_longer_than_half_the_lease_is_cut_off_as_provider_timed_out(
    amqp: Amqp, settings_for: Any
) -> None:
    """The backstop: an SMTP server that never greets, with an SMTP timeout longer than half
    the processing lease: each try is cut off at half the lease ('provider timed out'), so the
    batch ends inside its lease."""
    silent = SilentServer()
    await silent.start()
    settings = settings_for(
        smtp_host="127.0.0.1", smtp_port=silent.port, smtp_timeout_seconds=30,
        processing_lease_seconds=1.0, retry_base_seconds=0.2, retry_max_seconds=0.5,
    )
    try:
        stop_seconds, events = await _send_then_stop(
            amqp, settings, email_job("cut-off"), silent
        )
    finally:
        await silent.stop()
    deferred = [e for e in events if e.get("status") == "deferred"]
    report("backstop", deferrals=len(deferred), stop_s=round(stop_seconds, 2),
           reason=deferred[0]["reason"])
    assert [e["reason"] for e in deferred[:2]] == ["provider timed out"] * 2
    # Each try lasted about half the lease, far less than the SMTP timeout.
    assert stop_seconds < 2


async def test_http_provider_that_never_answers_times_out_and_the_gateway_stops(
    amqp: Amqp, settings_for: Any
) -> None:
    """A Twilio endpoint that accepts and never answers: each try times out after
    provider_timeout_seconds, the message is deferred ('twilio timed out'), the gateway stops
    at once."""
    silent = SilentServer()
    await silent.start()
    settings = settings_for(
        twilio_account_sid="AC" + "0" * 32, twilio_auth_token="fake-auth-token",
        twilio_base_url=silent.url, sms_from="+14155550199", sms_rate_per_second=1000,
        provider_timeout_seconds=0.5, retry_base_seconds=0.2, retry_max_seconds=0.5,
    )
    try:
        stop_seconds, events = await _send_then_stop(
            amqp, settings, sms_job("unanswered", phone(1)), silent
        )
    finally:
        await silent.stop()
    reasons = [e["reason"] for e in events if e.get("status") == "deferred"]
    report("silent HTTP", deferrals=len(reasons), connections=silent.accepted,
           stop_s=round(stop_seconds, 2), reason=reasons[0])
    assert reasons[0].startswith("twilio timed out")
    assert stop_seconds < settings.provider_timeout_seconds + 2 < settings.shutdown_grace_seconds


async def _send_then_stop(
    amqp: Amqp, settings: Settings, job: dict[str, Any], silent: SilentServer
) -> tuple[float, list[dict[str, Any]]]:
    """Publish ``job``; once it was deferred twice and its third try hangs, time the stop."""
    gateway = Gateway(settings, name="never-answers")
    await gateway.start()
    try:
        await amqp.publish(job)
        events = await amqp.wait_events(
            lambda ev: statuses(ev, job["id"]).count("deferred") >= 2, timeout=20
        )
        await wait_until(lambda: _accepted(silent, 3), 10, "the third try")
    finally:
        started = time.monotonic()
        await asyncio.wait_for(gateway.stop(), timeout=30)
    return time.monotonic() - started, events


async def _accepted(silent: SilentServer, count: int) -> bool:
    return silent.accepted >= count


# -- poison jobs --------------------------------------------------------------------------------

BIG = 10 * 1024 * 1024


def _poison(kind: str, n: int) -> tuple[dict[str, Any] | bytes, str, str]:
    """One poison job: (the job, where it must land: ``dead`` or ``failed``, its reason's start)."""
    message_id = f"poison-{kind}-{n}"
    if kind == "json":
        return f'{{"id": "{message_id}", "channel": '.encode(), "dead", "invalid JSON"
    if kind == "schema":
        job = {"id": message_id, "channel": "fax", "to": {"address": phone(n)}}
        return job, "dead", "channel: Input should be 'email', 'sms' or 'push'"
    if kind == "big":
        job = sms_job(message_id, phone(n), data={"name": "x" * BIG, "code": "1"})
        return job, "dead", "body of "
    if kind == "utf8":
        body = sms_job(message_id, phone(n))
        raw = orjson.dumps(body).replace(b"Hi ", b"Hi \xff\xfe ")
        return raw, "dead", "invalid JSON"
    if kind == "template":
        job = {"id": message_id, "channel": "sms", "to": {"address": phone(n)},
               "template": "no-such-template"}
        return job, "failed", "unknown template 'no-such-template'"
    if kind == "render":
        job = sms_job(message_id, phone(n), data={"name": "x"})  # no "code"
        return job, "failed", "template error in body: 'code' is undefined"
    assert kind == "address"
    return sms_job(message_id, "+1 not a number"), "failed", "invalid phone number"


POISON_KINDS = ("json", "schema", "utf8", "template", "render", "address")


def poisoned(good: list[dict[str, Any]], every: int, big: int) -> tuple[
    list[dict[str, Any] | bytes], dict[str, tuple[str, str]], dict[bytes, str]
]:
    """``good`` with a poison job after every ``every`` good ones (``big`` of them 10 MB), plus
    what each poison must become: failed ids with their reason, dead-letter bodies with theirs."""
    jobs: list[dict[str, Any] | bytes] = []
    failed: dict[str, tuple[str, str]] = {}
    dead: dict[bytes, str] = {}
    slots = len(good) // every
    big_slots = {slots * (k + 1) // (big + 1) for k in range(big)}
    for index, job in enumerate(good):
        jobs.append(job)
        slot, rest = divmod(index + 1, every)
        if rest:
            continue
        kind = "big" if slot in big_slots else POISON_KINDS[slot % len(POISON_KINDS)]
        poison, where, reason = _poison(kind, slot)
        jobs.append(poison)
        if where == "failed":
            assert isinstance(poison, dict)
            failed[poison["id"]] = ("failed", reason)
        else:
            dead[poison if isinstance(poison, bytes) else orjson.dumps(poison)] = reason
    return jobs, failed, dead


async def _good_rate(
    amqp: Amqp, settings: Settings, twilio: SwitchableTwilio, jobs: list[dict[str, Any] | bytes],
    good: list[dict[str, Any]],
) -> float:
    """Good jobs a second through a gateway process, first to last arrival at the fake (so
    the process's start-up is not counted)."""
    numbers = {job["to"]["address"] for job in good}
    await publish_many(amqp, jobs, chunk=100)
    async with gateway_process(settings):
        await wait_until(lambda: _all_arrived(twilio, numbers), 90, "every good job")
    arrivals = sorted(r.at for r in twilio.received if r.form["To"] in numbers)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


async def _all_arrived(twilio: SwitchableTwilio, numbers: set[str]) -> bool:
    return len({r.form["To"] for r in twilio.received} & numbers) == len(numbers)


async def test_poison_jobs_are_set_aside_and_the_good_ones_flow_at_speed(
    amqp: Amqp, settings_for: Any, pg_pool: asyncpg.Pool,
) -> None:
    """Invalid JSON, a wrong schema, 10 MB bodies, non-UTF-8 bytes, an unknown template, a
    template error and a bad address among 2,000 good jobs: each bad one lands in gateway.dead
    or 'failed' with its reason, every good one is sent, at 80 % or more of the clean rate.

    Timing in a test, kept from flaking on a loaded 2-core box: both rates are measured back to
    back, from the first to the last arrival at the fake (process start-up excluded). Below 0.8,
    both are measured again (up to three times) and the best of each is compared: other load on
    the machine only ever slows a run down, so the fastest run is the better estimate."""
    count, twilio = 2000, SwitchableTwilio()
    await twilio.start()
    settings = sms_settings(settings_for, twilio, prefetch=100, batch_size=50)
    clean_rates: list[float] = []
    poisoned_rates: list[float] = []
    try:
        for attempt in range(3):
            clean = [sms_job(f"clean-{attempt}-{n}", phone(n)) for n in range(count)]
            clean_rates.append(await _good_rate(amqp, settings, twilio, list(clean), clean))
            good = [sms_job(f"good-{attempt}-{n}", phone(count + n)) for n in range(count)]
            jobs, failed, dead = poisoned(good, every=20, big=3)
            poison = len(jobs) - len(good)
            poisoned_rates.append(await _good_rate(amqp, settings, twilio, jobs, good))
            await _check_poison(amqp, pg_pool, failed, dead)
            ratio = max(poisoned_rates) / max(clean_rates)
            report("poison", attempt=attempt + 1, good=count, poison=poison,
                   clean_rate=round(clean_rates[-1]), poisoned_rate=round(poisoned_rates[-1]),
                   ratio=round(ratio, 2))
            twilio.received.clear()
            if ratio >= 0.8:
                break
    finally:
        await twilio.stop()
    assert ratio >= 0.8, (clean_rates, poisoned_rates)


async def _check_poison(
    amqp: Amqp, pg_pool: asyncpg.Pool, failed: dict[str, tuple[str, str]], dead: dict[bytes, str]
) -> None:
    rows = await pg_pool.fetch(
        "SELECT id, status, reason FROM messages WHERE id = ANY($1::text[])", list(failed)
    )
    assert len(rows) == len(failed)
    for row in rows:
        status, reason = failed[row["id"]]
        assert row["status"] == status and row["reason"].startswith(reason), dict(row)
    letters = await amqp.dead_letters(len(dead), timeout=30)
    for letter in letters:
        reason = dead.pop(letter.body)
        assert str(letter.headers["x-gateway-error"]).startswith(reason)
    assert dead == {}
