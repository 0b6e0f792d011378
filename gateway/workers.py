"""``gateway serve --workers N``: this process plus N-1 consumer-only child processes.

Each child runs ``gateway serve --consumer-only`` with the same environment: its own
connections, consumers and scheduler. Only the parent serves HTTP. The processes share nothing
but PostgreSQL and RabbitMQ, and that is what keeps caps exact however many there are: every cap
slot is granted by PostgreSQL (``gateway_grant_caps``), every claim is a row there.

The parent forwards SIGTERM and SIGINT to the children, stops itself, waits for every child and
exits 1 if any child failed, or ended before it was asked to (the replica is then short of
consumers: it stops whole, for its supervisor to restart it).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from asyncio.subprocess import Process
from typing import Any, Sequence

import structlog

from gateway.app import Gateway

log = structlog.get_logger(__name__)

CHILD_COMMAND = (sys.executable, "-m", "gateway", "serve", "--consumer-only")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Children get their own grace period to finish, then this much more before they are killed.
KILL_MARGIN_SECONDS = 10.0


async def run_with_workers(
    gateway: Gateway, *, children: int, command: Sequence[str] = CHILD_COMMAND
) -> int:
    """Run ``gateway`` here and ``children`` processes of ``command``; return the exit status.

    Everything runs until SIGTERM or SIGINT, or until a child ends by itself. Raises what
    ``gateway.start()`` raises (no child is started then).
    """
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, _settle, stop, sig)
    try:
        await gateway.start()
        processes: list[Process] = []
        try:
            if not stop.done():
                await _spawn(processes, command, children)
            early = await _until_stopped(stop, processes)
        finally:
            codes = await _stop_all(gateway, processes, stop)
        forwarded = stop.result() if stop.done() else signal.SIGTERM
        failed = early or any(code not in (0, -forwarded) for code in codes)
        log.info("workers.stopped", exit_codes=codes, failed=failed)
        return 1 if failed else 0
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


def _settle(stop: asyncio.Future[signal.Signals], sig: signal.Signals) -> None:
    if not stop.done():
        stop.set_result(sig)


async def _spawn(processes: list[Process], command: Sequence[str], count: int) -> None:
    # Appended one by one, so the caller stops those that started if a later one cannot.
    for _ in range(count):
        processes.append(
            await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.DEVNULL)
        )
    log.info("workers.started", pids=[p.pid for p in processes])


async def _until_stopped(stop: asyncio.Future[signal.Signals], processes: list[Process]) -> bool:
    """Wait for a signal or for a child to end; ``True`` if a child ended first."""
    exits = [asyncio.ensure_future(p.wait()) for p in processes]
    watched: list[asyncio.Future[Any]] = [stop, *exits]
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in exits:
            waiting.cancel()
    ended = [(p.pid, p.returncode) for p in processes if p.returncode is not None]
    if ended and not stop.done():
        log.error("workers.child_ended", children=ended)
        return True
    return False


async def _stop_all(
    gateway: Gateway, processes: list[Process], stop: asyncio.Future[signal.Signals]
) -> list[int]:
    """Forward the signal, stop this process's gateway, then reap the children."""
    forwarded = stop.result() if stop.done() else signal.SIGTERM
    running = [p for p in processes if p.returncode is None]
    log.info(
        "workers.stopping",
        signal=forwarded.name,
        pids=[p.pid for p in running],
        grace_seconds=gateway.settings.shutdown_grace_seconds,
    )
    for process in running:
        process.send_signal(forwarded)
    try:
        await gateway.stop()
    finally:
        grace = gateway.settings.shutdown_grace_seconds
        codes = await _reap(processes, grace + KILL_MARGIN_SECONDS)
    return codes


async def _reap(processes: list[Process], timeout: float) -> list[int]:
    """Wait for every child for up to ``timeout`` seconds, then kill those still running."""
    waiting = asyncio.gather(*(p.wait() for p in processes))
    try:
        return list(await asyncio.wait_for(waiting, timeout))
    except TimeoutError:
        late = [p for p in processes if p.returncode is None]
        log.error("workers.killed", pids=[p.pid for p in late])
        for process in late:
            process.kill()
        return list(await asyncio.gather(*(p.wait() for p in processes)))
